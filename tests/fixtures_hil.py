"""Fixtures for the hil tests (placeholder until its area lands)."""

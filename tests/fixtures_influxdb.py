"""Fixtures for the influxdb tests (placeholder until its area lands)."""

"""Fixtures for the snmp tests (placeholder until its area lands)."""

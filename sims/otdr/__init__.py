"""Simulated OTDR: a fibre model of each topology link, synthetic traces, a SCPI instrument."""

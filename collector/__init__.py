"""qkdtel: telemetry and bench control for the hardware of QKD networks.

The collector (this package) schedules driver polls, accounts for their errors and delivers
their samples, loss-free, to InfluxDB or to a local line-protocol store.
"""

__version__ = "0.1.0"

"""Bench optical power meter over RS-232 (see README.md)."""

from qkdtel.drivers.powermeter.driver import PowerMeterDriver

__all__ = ["PowerMeterDriver"]

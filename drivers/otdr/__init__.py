"""OTDR driver (see README.md): acquisitions over SCPI, event tables, baseline alarms."""

from qkdtel.drivers.otdr.driver import OtdrDriver

__all__ = ["OtdrDriver"]

"""OTDR driver (see README.md): acquisitions over SCPI, event tables, baseline alarms.

`OtdrControl` runs one acquisition on its own (bench scripts, `qkdtel otdr acquire`); `OtdrDriver`
wraps it for the collector."""

from qkdtel.drivers.otdr.driver import OtdrDriver
from qkdtel.drivers.otdr.otdr import AcquisitionSettings, OtdrControl, Progress

__all__ = ["AcquisitionSettings", "OtdrControl", "OtdrDriver", "Progress"]

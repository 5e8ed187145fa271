"""OTDR driver (see README.md): acquisitions over SCPI, event tables, baseline alarms.

`Otdr` runs one acquisition on its own (bench scripts, `qkdtel otdr acquire`); `OtdrDriver`
wraps it for the collector."""

from qkdtel.drivers.otdr.driver import OtdrDriver
from qkdtel.drivers.otdr.otdr import AcquisitionSettings, Otdr, Progress

__all__ = ["AcquisitionSettings", "Otdr", "OtdrDriver", "Progress"]

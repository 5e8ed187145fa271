"""Key managers (KMEs) over ETSI GS QKD 014, status only (see README.md)."""

from qkdtel.drivers.etsi014.driver import Etsi014Driver

__all__ = ["Etsi014Driver"]

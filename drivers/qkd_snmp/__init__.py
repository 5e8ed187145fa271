"""SNMP driver for QKD modules (see README.md): one profile per vendor family."""

from qkdtel.drivers.qkd_snmp.driver import QkdSnmpDriver

__all__ = ["QkdSnmpDriver"]

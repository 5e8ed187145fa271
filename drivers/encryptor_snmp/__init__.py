"""L1/L2 link encryptors over SNMP: IF-MIB ports and QKDTEL-ENCRYPTOR-MIB associations."""

from qkdtel.drivers.encryptor_snmp.driver import EncryptorSnmpDriver

__all__ = ["EncryptorSnmpDriver"]

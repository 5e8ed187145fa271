"""SNMP agents simulating the QKD modules of the four MIB families (docs/design/qkd-mibs.md)."""

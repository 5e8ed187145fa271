"""SD-QKD nodes over NETCONF, reading the ETSI GS QKD 015 model (qkdtel-etsi-qkd-015.yang)."""

from qkdtel.drivers.sdqkd_node.driver import SdQkdNodeDriver

__all__ = ["SdQkdNodeDriver"]

"""The NETCONF layer shared by the NETCONF drivers and listeners (ncclient over SSH).

`NetconfSession` holds one session per device, reused across polls and re-established after a
drop with back-off; host keys are checked against a configured known_hosts file; every
ncclient failure becomes one `PollError` of the SDK naming the device (see session.py).
"""

from qkdtel.drivers.netconf.data import find_container
from qkdtel.drivers.netconf.options import NetconfConnection
from qkdtel.drivers.netconf.session import (
    BASE_NS,
    HostKeyRejected,
    NetconfSession,
    RpcError,
    connection_error,
)

__all__ = [
    "BASE_NS",
    "HostKeyRejected",
    "NetconfConnection",
    "NetconfSession",
    "RpcError",
    "connection_error",
    "find_container",
]

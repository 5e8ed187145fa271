"""Error classes a poll can end in.

The collector records the class of the last error of every device (`qkdtel_device_status`,
field `error_class`), so drivers raise one of these rather than protocol-specific exceptions.
Messages must never contain secrets.
"""

from __future__ import annotations


class PollError(Exception):
    """A poll failed for a reason the operator should see; `kind` is the error class."""

    kind = "error"


class DeviceTimeout(PollError):
    """The device did not answer in time."""

    kind = "timeout"


class AuthError(PollError):
    """The device rejected our credentials (SNMPv3 keys, community, SSH, token)."""

    kind = "auth"


class NoSuchObject(PollError):
    """The device does not have an object the driver asked for."""

    kind = "no_such_object"


class Refused(PollError):
    """The connection was refused or the host is unreachable."""

    kind = "refused"


class Malformed(PollError):
    """The device answered something the driver cannot interpret."""

    kind = "malformed"

"""The closed set of errors a poll (or a listener) can end in.

    PollError                 kind "error": a failure with no more precise class
     ├── DeviceTimeout        kind "timeout": no (complete) answer in time
     ├── Refused              kind "refused": connection refused, host or port unreachable
     ├── ConnectionLost       kind "connection_lost": an open connection broke mid-conversation
     ├── AuthError            kind "auth": credentials rejected (SNMPv3 keys, community, token)
     ├── NoSuchObject         kind "no_such_object": the device lacks an object asked for
     ├── Malformed            kind "malformed": an answer the driver cannot interpret
     ├── InstrumentError      kind "instrument_error": the device reported an error itself
     │                        (an SCPI error-queue entry); the conversation is intact
     └── DeviceBusy           kind "busy": a poll abandoned after its timeout still runs in
                              its worker thread (`BlockingDriver`), so this one is skipped

The collector records the kind of the last error of every device (`qkdtel_device_status`,
field `error_class`, documented in docs/metrics.md), plus "internal" for an exception that is
no `PollError` (a driver bug). Drivers raise one of these classes, never a new kind: the set
is closed so that dashboards and alerts can rely on it. A driver may subclass one to carry
more detail (as `ScpiError` does), keeping its kind.

Raise with the cause chained (`raise Refused(...) from exc`), so a traceback in the log shows
what the library said. Messages must never contain secrets; where even the cause could carry
one, raise `from None` and say why in a comment there.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

ErrorKind = Literal[
    "error",
    "timeout",
    "refused",
    "connection_lost",
    "auth",
    "no_such_object",
    "malformed",
    "instrument_error",
    "busy",
]
"""Every `PollError.kind`."""

StatusErrorClass = Literal[ErrorKind, "internal"]
"""Every value of `qkdtel_device_status.error_class` besides "" (up): the kinds, and
"internal" for a driver that raised something other than a `PollError`."""

ERROR_KINDS: frozenset[str] = frozenset(get_args(ErrorKind))


class PollError(Exception):
    """A poll failed for a reason the operator should see; `kind` is its error class."""

    kind: ClassVar[ErrorKind] = "error"

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Keep the set closed: a subclass may only reuse a kind of the tree."""
        super().__init_subclass__(**kwargs)
        if cls.kind not in ERROR_KINDS:
            raise TypeError(f"{cls.__name__}.kind {cls.kind!r} is not one of {sorted(ERROR_KINDS)}")


class DeviceTimeout(PollError):
    """The device did not answer (completely) in time."""

    kind = "timeout"


class Refused(PollError):
    """The connection was refused or the host is unreachable."""

    kind = "refused"


class ConnectionLost(PollError):
    """An open connection broke (reset, closed by the peer, a pulled serial line)."""

    kind = "connection_lost"


class AuthError(PollError):
    """The device rejected our credentials (SNMPv3 keys, community, SSH, token)."""

    kind = "auth"


class NoSuchObject(PollError):
    """The device does not have an object the driver asked for."""

    kind = "no_such_object"


class Malformed(PollError):
    """The device answered something the driver cannot interpret."""

    kind = "malformed"


class InstrumentError(PollError):
    """The device itself reported an error (e.g. an SCPI error-queue entry) after a command."""

    kind = "instrument_error"


class DeviceBusy(PollError):
    """An earlier poll, abandoned after its timeout, still runs in its worker thread."""

    kind = "busy"

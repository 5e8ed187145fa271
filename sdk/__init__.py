"""qkdtel's plugin SDK: everything a driver or listener author imports, and nothing else.

    from qkdtel.sdk import Driver, Model, Duration, Sample, now_ns, Refused

    class MyOptions(Model):
        address: str
        timeout_margin: Duration = 1.0

    class MyDriver(Driver[MyOptions]):
        async def poll(self) -> list[Sample]:
            ...

Register the class in the `qkdtel.drivers` (or `qkdtel.listeners`) entry-point group of your
own distribution. This package depends on the standard library and pydantic only, never on
the daemon, so a plugin built against it stays valid however the collector changes inside.
"""

from qkdtel.sdk._driver import BlockingDriver, Driver
from qkdtel.sdk._errors import (
    ERROR_KINDS,
    AuthError,
    ConnectionLost,
    DeviceBusy,
    DeviceTimeout,
    ErrorKind,
    InstrumentError,
    Malformed,
    NoSuchObject,
    PollError,
    Refused,
    StatusErrorClass,
)
from qkdtel.sdk._listener import DeviceSource, Emit, Listener, ListenerContext, Problem
from qkdtel.sdk._options import (
    DURATION_PATTERN,
    MAX_DURATION,
    Duration,
    Model,
    NoOptions,
    is_secret,
    parse_duration,
)
from qkdtel.sdk._sample import FieldValue, PartialPoll, Sample, now_ns

__all__ = [
    "DURATION_PATTERN",
    "ERROR_KINDS",
    "MAX_DURATION",
    "AuthError",
    "BlockingDriver",
    "ConnectionLost",
    "DeviceBusy",
    "DeviceSource",
    "DeviceTimeout",
    "Driver",
    "Duration",
    "Emit",
    "ErrorKind",
    "FieldValue",
    "InstrumentError",
    "Listener",
    "ListenerContext",
    "Malformed",
    "Model",
    "NoOptions",
    "NoSuchObject",
    "PartialPoll",
    "PollError",
    "Problem",
    "Refused",
    "Sample",
    "StatusErrorClass",
    "is_secret",
    "now_ns",
    "parse_duration",
]

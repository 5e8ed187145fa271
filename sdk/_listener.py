"""The listener contract: a plugin that receives data devices push (traps, notifications).

Pollers are called on schedule; a listener runs for the collector's whole life, and hands
what it receives to `emit`, which spools it like polled samples. It declares its options model
as drivers do and is discovered through the `qkdtel.listeners` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from qkdtel.sdk._options import NoOptions, options_model_of
from qkdtel.sdk._sample import Sample

OptionsT = TypeVar("OptionsT", bound=BaseModel)

Emit = Callable[[list[Sample]], Awaitable[None]]
"""What a listener calls with samples it received: returns once they are spooled durably."""

Problem = tuple[tuple[str | int, ...], str]
"""A problem with a listener's options: where (keys below the listener's entry) and what."""


@dataclass(frozen=True)
class DeviceSource:
    """A configured device, as a listener needs it to attribute what arrives."""

    name: str
    driver: str
    address: str | None
    """The device's `address` option, if its driver has one (e.g. `10.0.4.21:161`)."""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ListenerContext:
    """What the collector tells a listener at start, beyond its own options."""

    devices: Sequence[DeviceSource] = ()


class Listener(ABC, Generic[OptionsT]):
    """Base of every listener: `class MyListener(Listener[MyOptions])`.

    `start` returns once the listener is receiving (a socket bound, a session open); it then
    runs on the collector's event loop, must not block it, and calls `emit` for what arrives.
    `stop` releases everything; the collector calls it once, at shutdown.
    """

    options_model: ClassVar[type[BaseModel]] = NoOptions
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = options_model_of(cls, Listener)
        if model is not None:
            cls.options_model = model

    def __init__(self, name: str, options: OptionsT):
        self.name = name
        self.options: OptionsT = options

    @classmethod
    def environment_problems(cls, options: OptionsT) -> list[Problem]:
        """What starting with `options` would trip on on this machine (an address to bind,
        a file to read), checked without changing anything: `qkdtel check` reports it."""
        return []

    @abstractmethod
    async def start(self, emit: Emit, context: ListenerContext) -> None:
        """Begin receiving; hand every batch of samples to `emit`."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop receiving and release what `start` took."""

    async def devices_changed(self, context: ListenerContext) -> None:
        """The configured devices changed (the collector reloaded its file): attribute what
        arrives by `context.devices` from now on. By default the listener keeps the list it
        started with."""

    def counters(self) -> Mapping[str, int]:
        """What the listener counted since start (received, refused by reason...): the
        collector reports them as fields of `qkdtel_listener` (each must be in docs/metrics.md)
        and on /metrics. Nothing by default."""
        return {}

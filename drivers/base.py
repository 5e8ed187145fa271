"""The driver-plugin contract.

A driver does protocol and device semantics only: it declares the model of its own options,
and turns one poll into samples. The collector does everything else (scheduling, timeouts,
retries and back-off, error accounting, tagging with the device's configured tags, delivery).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from qkdtel.sample import Sample


class NoOptions(BaseModel):
    """Options model of a driver that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Driver(ABC):
    """Base of every driver.

    Subclasses set `options_model` (validated from the device's keys beyond the collector's own:
    name, driver, interval, timeout, enabled, tags) and implement `poll`.

    `poll` runs on the collector's event loop and must not block it: network I/O is awaited,
    and blocking libraries go through `asyncio.to_thread` (see `BlockingDriver`). It raises a
    `qkdtel.errors.PollError` subclass for a failure the operator should see.
    """

    options_model: ClassVar[type[BaseModel]] = NoOptions
    description: ClassVar[str] = ""

    def __init__(self, name: str, options: BaseModel, timeout: float):
        self.name = name
        self.options = options
        self.timeout = timeout

    @abstractmethod
    async def poll(self) -> list[Sample]:
        """Read the device once and return its samples."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release connections; called once when the collector stops."""


class BlockingDriver(Driver):
    """A driver built on a blocking library (pyvisa, pyserial, ncclient).

    Its `poll_blocking` runs in a worker thread so a slow instrument never stalls the event
    loop, and a lock keeps two polls of the same device from overlapping.
    """

    def __init__(self, name: str, options: BaseModel, timeout: float):
        super().__init__(name, options, timeout)
        self._lock = asyncio.Lock()

    @abstractmethod
    def poll_blocking(self) -> list[Sample]:
        """Read the device once (in a worker thread)."""

    async def poll(self) -> list[Sample]:
        async with self._lock:
            return await asyncio.to_thread(self.poll_blocking)

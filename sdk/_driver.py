"""The driver contract: a class that turns one poll of a device into samples.

A driver does protocol and device semantics only: it declares the model of its own options,
and turns one poll into samples. The collector does everything else (scheduling, timeouts,
retries and back-off, error accounting, tagging with the device's configured tags, delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from qkdtel.sdk._errors import DeviceBusy
from qkdtel.sdk._options import NoOptions, options_model_of
from qkdtel.sdk._sample import Sample

log = logging.getLogger(__name__)

OptionsT = TypeVar("OptionsT", bound=BaseModel)
T = TypeVar("T")


def in_daemon_thread(func: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `func` in a new daemon thread; its outcome settles the returned future.

    Not `asyncio.to_thread`: the default executor's threads are joined when the loop and the
    interpreter shut down, so one thread stuck on a hung instrument would keep the daemon
    from ever exiting. A daemon thread is abandoned at exit instead.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = context.run(func), None
        except BaseException as exc:  # handed to the awaiting side, whatever it is
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class Driver(ABC, Generic[OptionsT]):
    """Base of every driver: `class MyDriver(Driver[MyOptions])`.

    `MyOptions` (a `Model`) is validated from the device's keys beyond the collector's own
    (name, driver, interval, timeout, enabled, tags) and becomes `options_model`; a driver
    that takes no options subclasses plain `Driver` (`NoOptions`).

    `poll` runs on the collector's event loop and must not block it: network I/O is awaited,
    and blocking libraries go through a worker thread (see `BlockingDriver`). It raises a
    `PollError` subclass for a failure the operator should see. A device that answered but
    lacked some objects is no failure: return a `PartialPoll` (the samples read, and the
    names of what was missing) and the collector writes them, marking the poll `degraded`.
    """

    options_model: ClassVar[type[BaseModel]] = NoOptions
    description: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = options_model_of(cls, Driver)
        if model is not None:
            cls.options_model = model

    def __init__(self, name: str, options: OptionsT, timeout: float):
        self.name = name
        self.options: OptionsT = options
        self.timeout = timeout

    @abstractmethod
    async def poll(self) -> list[Sample]:
        """Read the device once and return its samples (a `PartialPoll` if some were absent)."""

    async def aclose(self) -> None:
        """Release connections; called once when the collector stops."""


class BlockingDriver(Driver[OptionsT]):
    """A driver built on a blocking library (pyvisa, pyserial, ncclient).

    Its `poll_blocking` runs in a worker thread so a slow instrument never stalls the event
    loop. A thread cannot be stopped: when the collector gives up on a poll (its timeout), the
    thread goes on, and the device stays taken until it returns. Meanwhile `poll` raises
    `DeviceBusy` at once (status `busy`) rather than start a second conversation with a
    device that is still in the first one, or queue polls behind a hung thread.
    """

    close_timeout: ClassVar[float] = 5.0
    """Seconds `aclose` waits for `close_blocking` before leaving it to its thread."""

    def __init__(self, name: str, options: OptionsT, timeout: float):
        super().__init__(name, options, timeout)
        self._worker: asyncio.Future[list[Sample]] | None = None

    @property
    def busy(self) -> bool:
        """True while a worker thread of an earlier poll has not returned."""
        return self._worker is not None and not self._worker.done()

    @abstractmethod
    def poll_blocking(self) -> list[Sample]:
        """Read the device once (in a worker thread)."""

    async def poll(self) -> list[Sample]:
        """Run `poll_blocking` in a worker thread; a cancelled wait leaves the thread owning
        the device (see the class)."""
        if self.busy:
            raise DeviceBusy(
                f"{self.name}: an earlier poll, abandoned after its timeout, is still running"
            )
        worker = in_daemon_thread(self.poll_blocking, f"poll:{self.name}")
        worker.add_done_callback(self._worker_returned)
        self._worker = worker
        return await asyncio.shield(worker)

    def _worker_returned(self, worker: asyncio.Future[list[Sample]]) -> None:
        """Retrieve the outcome of a worker whose poll nobody awaits any more (abandoned after
        its timeout), so asyncio does not report it as never retrieved."""
        if not worker.cancelled() and worker.exception() is not None:
            log.debug("%s: abandoned poll ended with %r", self.name, worker.exception())

    def close_blocking(self) -> None:
        """Release the device (in a worker thread); may wait for a hung poll's thread."""

    async def aclose(self) -> None:
        """Run `close_blocking` in a thread, waiting at most `close_timeout` seconds: a thread
        stuck on a hung device must not hold up the collector's shutdown."""
        closing = in_daemon_thread(self.close_blocking, f"close:{self.name}")
        done, _ = await asyncio.wait({closing}, timeout=self.close_timeout)
        if not done:
            closing.add_done_callback(self._worker_returned)
            log.warning(
                "%s: close unfinished after %g s; left to its thread", self.name, self.close_timeout
            )
        else:
            closing.result()

"""Asyncio simulators served from a daemon thread with its own event loop, for synchronous
code (pytest fixtures, the `qkdtel sims` commands).

    class ServerThread(BackgroundLoop):
        what, thread_name = "simulated instruments", "qkdtel-scpi-sims"

        async def _start_serving(self): ...   # listen; an exception fails start()
        async def _stop_serving(self): ...    # close, on the same loop

    with ServerThread(...) as thread:         # serving once entered
        thread.call(lambda: ...)              # runs on the loop, returns the result
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Self


class BackgroundLoop:
    """Start in a daemon thread (`start`, or enter the `with` block), stop with `stop`."""

    what = "simulators"  # for the error messages of start()
    thread_name = "qkdtel-sims"

    def __init__(self, start_timeout: float, stop_timeout: float):
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    async def _start_serving(self) -> None:
        raise NotImplementedError

    async def _stop_serving(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve; TimeoutError if not up within the start timeout, RuntimeError if starting
        failed."""
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise TimeoutError(f"{self.what} did not start in {self._start_timeout} s")
        if self._error is not None:
            raise RuntimeError(f"{self.what} failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self._start_serving()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._stop_serving()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run `fn()` on the loop and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=self._stop_timeout)
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""`ScpiInstrument`: one instrument, its command table, and jobs that drive it safely.

What a job guarantees (see `ScpiInstrument.job`):

- one job at a time per instrument, across every driver instance of the process: the lock is
  keyed by the canonical VISA resource name, and the open connection is shared with it;
- a time budget: every read/write gets `min(visa.timeout, what is left of the budget)`, so the
  driver raises `DeviceTimeout` itself (with the command named) before the collector gives up;
- errors checked: after every command that can fail, the error queue (`SYSTem:ERRor?`) is read
  to its end and any entry raises `ScpiError` naming the command and the instrument's message;
- a known state after trouble: a timeout, a malformed answer or a lost connection closes the
  connection (stale answers die with it) and marks the instrument for recovery: reopen, device
  clear, the table's `abort` and `clear_status` commands, then `*OPC?` must answer. Recovery is
  tried at once (within `recovery_timeout`) and, if the instrument still does not answer, again
  at the start of the next job, before anything else is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from pyvisa import constants

from qkdtel.drivers.scpi import socket_io
from qkdtel.drivers.scpi.commands import CommandTable, action, error_entry, measurement
from qkdtel.drivers.scpi.job import Job, ScpiError
from qkdtel.drivers.scpi.transport import (
    VisaSettings,
    apply_settings,
    is_serial,
    open_resource,
    visa_errors,
)
from qkdtel.sdk import DeviceTimeout, Malformed, PollError

log = logging.getLogger(__name__)

POLL_MARGIN_S = 2.0
"""At most this much of a poll's timeout is kept back from its job (at most a tenth of it)."""
TRANSFER_ALLOWANCE_S = 60.0
"""Added to an operation's own limit for the I/O around it: configuring, and reading a 50,001
point ASCII trace over a slow line. Only a ceiling: a silent instrument is still reported after
the VISA `timeout` of the read it does not answer."""


def poll_budget(poll_timeout: float) -> float:
    """The budget of a job run inside a poll: the poll's timeout less a margin, so the driver
    aborts the instrument and reports its own DeviceTimeout (naming the command) before the
    collector gives up on the poll."""
    return max(poll_timeout - min(POLL_MARGIN_S, 0.1 * poll_timeout), 0.1)


def operation_budget(operation_s: float) -> float:
    """The budget of a job around one long operation (a sweep, an acquisition) that no poll
    timeout bounds (bench tooling): the operation's own limit plus the I/O around it."""
    return operation_s + TRANSFER_ALLOWANCE_S


@dataclass
class _Shared:
    """What all users of one instrument share: its lock, connection and recovery flag."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    resource: Any = None
    needs_recovery: bool = False
    users: int = 0


_registry: dict[str, _Shared] = {}
_registry_lock = threading.Lock()


def _acquire_shared(resource: str) -> _Shared:
    with _registry_lock:
        shared = _registry.setdefault(resource, _Shared())
        shared.users += 1
        return shared


def _release_shared(resource: str) -> _Shared | None:
    """Drop one user; the entry (to be closed by the caller) when it was the last."""
    with _registry_lock:
        shared = _registry[resource]
        shared.users -= 1
        if shared.users:
            return None
        del _registry[resource]
        return shared


class ScpiInstrument:
    """A SCPI instrument reached through VISA and driven through a `CommandTable`.

    The table names used by this class itself (all optional but `error` and `complete`):
    `error` (the error-queue query, parsed to `(code, message)`), `complete` (`*OPC?`),
    `clear_status` (`*CLS`, sent at the start of every job), `abort` (stops a running
    operation; sent on recovery). `ieee488_table()` gives the common ones.
    """

    def __init__(
        self,
        settings: VisaSettings,
        commands: CommandTable,
        *,
        recovery_timeout: float = 2.0,
    ):
        self.settings = settings
        self.commands = commands
        self.recovery_timeout = recovery_timeout
        self.where = settings.resource
        self._shared = _acquire_shared(settings.resource)
        self._closed = False

    @property
    def needs_recovery(self) -> bool:
        """The last job ended in a timeout or garbled exchange and recovery has not succeeded."""
        return self._shared.needs_recovery

    @contextmanager
    def job(self, budget: float) -> Iterator[Job]:
        """Drive the instrument for at most `budget` seconds, alone (blocking; worker thread).

        Waits for another job on the same instrument within the budget (DeviceTimeout if it
        does not end in time), recovers the instrument first if needed, sends `clear_status`.
        """
        if self._closed:
            raise PollError(f"{self.where}: the instrument was closed")
        deadline = time.monotonic() + budget
        if not self._shared.lock.acquire(timeout=budget):
            raise DeviceTimeout(f"{self.where}: busy: another job held it for all of {budget:g} s")
        try:
            if self._shared.needs_recovery:
                self._recover(deadline)
            elif self._shared.resource is None:
                self._open()
            else:  # shared with another driver instance, maybe with other settings
                try:
                    with visa_errors(self.where, "applying the port settings"):
                        self._configure(self._shared.resource)
                except PollError as exc:  # e.g. a pulled serial line: reconnect, next job
                    self._after_failure(exc)
                    raise
            job = Job(self, deadline)
            try:
                if "clear_status" in self.commands:
                    job.run("clear_status")
                yield job
            except (DeviceTimeout, Malformed) as exc:
                self._after_failure(exc)
                raise
            except ScpiError:
                raise  # the instrument answered and its queue is drained: its state is known
            except PollError as exc:
                self._after_failure(exc)
                raise
        finally:
            self._shared.lock.release()

    def close(self) -> None:
        """Stop using the instrument; the connection closes when its last user closes."""
        if self._closed:
            return
        self._closed = True
        shared = _release_shared(self.settings.resource)
        if shared is None:
            return
        # Wait a moment for an abandoned job still running in a worker thread.
        locked = shared.lock.acquire(timeout=self.recovery_timeout)
        try:
            self._drop(shared)
        finally:
            if locked:
                shared.lock.release()

    # -- connection and recovery ---------------------------------------------------------------

    def _open(self) -> Any:
        resource = open_resource(self.settings)
        self._shared.resource = resource
        if self.where.endswith("::SOCKET"):
            socket_io.tune_socket(resource, self.settings.chunk_size)
        return resource

    def _configure(self, resource: Any) -> None:
        """This instance's settings onto a connection opened by another instance."""
        apply_settings(resource, self.settings)
        if self.where.endswith("::SOCKET"):
            socket_io.tune_socket(resource, self.settings.chunk_size)

    @staticmethod
    def _drop(shared: _Shared) -> None:
        if shared.resource is not None:
            with suppress(Exception):  # the connection may already be gone; nothing to save
                shared.resource.close()
            shared.resource = None

    def _after_failure(self, exc: PollError) -> None:
        log.warning("%s; recovering the instrument", exc)
        self._shared.needs_recovery = True
        self._drop(self._shared)
        try:
            self._recover(time.monotonic() + self.recovery_timeout)
        except PollError as again:
            log.warning("recovery failed: %s; retrying before the next job", again)

    def _recover(self, deadline: float) -> None:
        """Fresh connection, device clear, abort, clear status, and proof that it answers."""
        self._drop(self._shared)
        resource = self._open()
        try:
            with visa_errors(self.where, "device clear"):
                if is_serial(self.settings.resource):
                    resource.flush(constants.BufferOperation.discard_read_buffer)
                else:
                    resource.clear()
            job = Job(self, deadline)
            for name in ("abort", "clear_status"):
                if name in self.commands:
                    job.send(self.commands[name].render_write(name))
            job.wait_complete(deadline - time.monotonic(), what="the recovery (abort, *CLS)")
        except PollError:
            self._drop(self._shared)
            raise
        self._shared.needs_recovery = False
        log.info("%s: recovered (aborted, status cleared)", self.where)


def ieee488_table(name: str, **commands: Any) -> CommandTable:
    """A table with the IEEE 488.2 / SCPI-99 common commands, plus `commands`.

    `identify` (*IDN?), `clear_status` (*CLS), `complete` (*OPC?), `reset` (*RST), `error`
    (:SYSTem:ERRor?, parsed to (code, message)).
    """
    common = {
        "identify": measurement("*IDN?", doc="maker,model,serial,firmware"),
        "clear_status": action("*CLS", check=False, doc="clear event registers, error queue"),
        "complete": measurement("*OPC?", doc="1 once pending operations have completed"),
        "reset": action("*RST", doc="factory settings"),
        "error": measurement(":SYSTem:ERRor?", parse=error_entry, doc="next error-queue entry"),
    }
    return CommandTable(name, {**common, **commands})

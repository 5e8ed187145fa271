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
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
from pyvisa import constants
from pyvisa.errors import VisaIOError

from qkdtel.drivers.scpi.blocks import ascii_values, block_values, header_digits, payload_length
from qkdtel.drivers.scpi.commands import CommandTable, action, error_entry, measurement
from qkdtel.drivers.scpi.transport import (
    VisaSettings,
    apply_settings,
    is_serial,
    open_resource,
    raw_socket,
    visa_errors,
)
from qkdtel.sdk import DeviceTimeout, Malformed, PollError

log = logging.getLogger(__name__)

MAX_ERRORS = 32
"""Error-queue entries read after one command at most (SCPI queues hold at least 2)."""


class ScpiError(PollError):
    """The instrument reported errors (its error queue) after a command."""

    kind = "error"

    def __init__(self, where: str, command: str, errors: list[tuple[int, str]]):
        self.where = where
        self.command = command
        self.errors = errors
        listed = "; ".join(f'{code},"{message}"' for code, message in errors)
        super().__init__(f"{where}: {command!r} failed: {listed}")


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
                        apply_settings(self._shared.resource, self.settings)
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
        return resource

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


class Job:
    """The I/O of one job: every method names the command in its errors. See `ScpiInstrument`."""

    def __init__(self, instrument: ScpiInstrument, deadline: float):
        self.instrument = instrument
        self.deadline = deadline
        self.where = instrument.where
        self.commands = instrument.commands
        self.operation: str | None = None  # the last slow command sent, for timeout messages

    @property
    def resource(self) -> Any:
        resource = self.instrument._shared.resource
        if resource is None:
            raise PollError(f"{self.where}: not connected")
        return resource

    def remaining(self) -> float:
        """Seconds left of the job's budget."""
        return self.deadline - time.monotonic()

    def _limit(self, what: str, limit: float | None = None) -> float:
        """Set the VISA timeout for the next operation; DeviceTimeout if no time is left."""
        left = self.remaining()
        if left <= 0:
            raise DeviceTimeout(f"{self.where}: time budget used up before {what}")
        seconds = min(limit if limit is not None else self.instrument.settings.timeout, left)
        self.resource.timeout = max(1, int(seconds * 1000))
        return seconds

    # -- table-driven API ----------------------------------------------------------------------

    def set(self, name: str, value: Any = None, **params: Any) -> None:
        """Send command `name` with `value`, then check the error queue (if the table says so)."""
        command = self.commands[name]
        text = command.render_write(name, value, **params)
        self.send(text)
        if command.slow:
            self.operation = text
        if command.check:
            self.check_errors(text)

    def run(self, name: str, **params: Any) -> None:
        """Send action `name` (no value); same checks as `set`."""
        self.set(name, None, **params)

    def get(self, name: str, **params: Any) -> Any:
        """Query `name` and return its parsed answer."""
        command = self.commands[name]
        text = command.render_query(name, **params)
        return command.parse_answer(name, self.ask(text), self.where)

    def query_block(
        self,
        name: str,
        dtype: str,
        expected: int | None = None,
        *,
        finite: bool = True,
        **params: Any,
    ) -> np.ndarray:
        """Query `name`, read its IEEE 488.2 definite-length block, decode numbers of `dtype`.

        `expected`: the number of values; `finite=False` lets NaN and infinity through.
        """
        text = self.commands[name].render_query(name, **params)
        self.send(text)
        payload = self._read_payload(text)
        return block_values(payload, dtype, f"{self.where}: {text}", expected, finite=finite)

    def query_values(self, name: str, expected: int | None = None, **params: Any) -> np.ndarray:
        """Query `name` and read ASCII numbers: one message, or messages until `expected`."""
        text = self.commands[name].render_query(name, **params)
        self.send(text)
        where = f"{self.where}: {text}"
        parts = [self.read_text(text)]
        if expected is not None:
            count = len(ascii_values(parts[0], where))
            while count < expected:
                parts.append(self.read_text(text))
                count += len(ascii_values(parts[-1], where))
        return ascii_values(",".join(parts), where, expected)

    def _operation(self, what: str | None) -> str:
        if what is not None:
            return what
        return repr(self.operation) if self.operation else "the operation"

    def wait_complete(self, limit: float, what: str | None = None) -> None:
        """Block on the table's `complete` query (`*OPC?`) for up to `limit` seconds."""
        what = self._operation(what)
        text = self.commands["complete"].render_query("complete")
        self.send(text)
        seconds = self._limit(what, limit)
        with visa_errors(self.where, f"{what} ({text})", seconds):
            answer = self.resource.read()
        if answer.strip() not in ("1", "+1"):
            raise Malformed(f"{self.where}: {text} answered {answer.strip()[:40]!r}, expected 1")

    def wait_until(
        self,
        name: str,
        done: Callable[[Any], bool],
        limit: float,
        interval: float = 0.05,
        what: str | None = None,
    ) -> Any:
        """Poll status query `name` until `done(value)`; DeviceTimeout after `limit` seconds."""
        what = self._operation(what)
        give_up = min(time.monotonic() + limit, self.deadline)
        while True:
            value = self.get(name)
            if done(value):
                return value
            if time.monotonic() + interval > give_up:
                raise DeviceTimeout(f"{self.where}: {what} did not complete within {limit:g} s")
            time.sleep(interval)

    def check_errors(self, after: str) -> None:
        """Read the error queue to its end; ScpiError naming `after` if it held anything."""
        errors: list[tuple[int, str]] = []
        command = self.commands["error"]
        text = command.render_query("error")
        for _ in range(MAX_ERRORS):
            code, message = command.parse_answer("error", self.ask(text), self.where)
            if code == 0:
                break
            errors.append((code, message))
        if errors:
            raise ScpiError(self.where, after, errors)

    # -- raw I/O (the text comes from a command table) -----------------------------------------

    def send(self, text: str) -> None:
        """Write one command (and the write termination).

        On a pyvisa-py SOCKET session whose socket this layer can reach (`raw_socket`), the
        bytes go out with a non-blocking `send` on it, waiting for room (an instrument that
        stopped reading) for at most `min(visa.timeout, what is left of the budget)`: pyvisa's
        write costs ~20 µs of attribute calls and a `select` per command, and has no send
        timeout at all. Elsewhere (VXI-11, serial, another backend): pyvisa's write. Errors
        are translated alike (`visa_errors`).
        """
        log.debug("%s <- %s", self.where, text)
        if self.where.endswith("::SOCKET"):
            direct = raw_socket(self.resource)
            if direct is not None:
                self._socket_send(text, direct[0])
                return
        seconds = self._limit(f"sending {text!r}")
        with visa_errors(self.where, f"sending {text!r}", seconds):
            self.resource.write(text)

    def _socket_send(self, text: str, sock: socket.socket) -> None:
        settings = self.instrument.settings
        seconds = min(settings.timeout, self.remaining())
        if seconds <= 0:
            raise DeviceTimeout(f"{self.where}: time budget used up before sending {text!r}")
        data = memoryview((text + settings.write_termination).encode(self.resource.encoding))
        give_up = time.monotonic() + seconds
        try:
            while data:
                try:
                    data = data[sock.send(data, socket.MSG_DONTWAIT) :]
                except BlockingIOError:  # the instrument is not reading: wait for room
                    _wait_ready(sock, select.POLLOUT, give_up - time.monotonic())
        except OSError as exc:
            _translate(exc, self.where, f"sending {text!r}", seconds)

    def read_text(self, after: str) -> str:
        """Read one answer message (terminator stripped)."""
        seconds = self._limit(f"the answer to {after!r}")
        with visa_errors(self.where, repr(after), seconds):
            answer = self.resource.read()
        log.debug("%s -> %s", self.where, answer[:200])
        return answer

    def ask(self, text: str) -> str:
        """Write a query and read its answer."""
        self.send(text)
        return self.read_text(text)

    def read_block(self, after: str) -> bytes:
        """Read a definite-length block and its terminator; the payload.

        A message that ends (END, or a terminator followed by silence) before the declared
        length is a truncated block: Malformed, not a timeout. Silence in mid-payload that did
        not follow a terminator byte is a stalled instrument: DeviceTimeout.
        """
        return bytes(self._read_payload(after))

    def _read_payload(self, after: str) -> bytes | memoryview:
        """`read_block` without the final copy (a view of a buffer of its own)."""
        if self.where.endswith("::SOCKET"):
            direct = raw_socket(self.resource)
            if direct is not None:
                return self._socket_block(after, *direct)
        if not self.where.endswith("::INSTR") or is_serial(self.where):
            # Serial: a terminator byte inside the payload is not END (see `_read_block`).
            # A raw socket whose session this layer cannot reach (another VISA backend): the
            # termination stays on, as the only way to see where a cut message ended (a read
            # that times out returns nothing of what it received); slow but exact.
            return self._read_block(after)
        # VXI-11/HiSLIP mark the end of a message (END): no terminator byte needed, and
        # pyvisa-py would stop a read at any terminator byte inside the binary payload.
        resource = self.resource
        termination = resource.read_termination
        resource.read_termination = None
        try:
            return self._read_block(after)
        finally:
            resource.read_termination = termination

    def _read_block(self, after: str) -> bytes:
        where = f"{self.where}: {after}"
        seconds = self._limit(f"the answer to {after!r}")
        with visa_errors(self.where, repr(after), seconds):
            head, _ = self._read_chunk(2)
        if len(head) < 2:
            head += self._read_exact(2 - len(head), after)
        digits = header_digits(head, where)
        length = payload_length(self._read_exact(digits, after), where)
        payload = bytearray()
        serial = is_serial(self.where)
        ended = False  # the last chunk stopped at a terminator byte
        while len(payload) < length:
            seconds = self._limit(f"the rest of the block answering {after!r}")
            try:
                chunk, status = self._read_chunk(
                    min(self.instrument.settings.chunk_size, length - len(payload))
                )
            except VisaIOError as exc:
                if exc.error_code == constants.StatusCode.error_timeout and ended:
                    raise self._truncated(where, length, payload) from None
                with visa_errors(self.where, repr(after), seconds):
                    raise
            payload += chunk
            end = status == constants.StatusCode.success
            if end and not serial and len(payload) < length:
                raise self._truncated(where, length, payload)  # END came before the data
            # pyvisa-py reports a serial terminator byte as END: only a hint, like a termchar
            ended = status == constants.StatusCode.success_termination_character_read or (
                end and serial
            )
        terminator = self.instrument.settings.read_termination.encode("ascii")
        if terminator:
            tail = self._read_exact(len(terminator), after)
            if tail != terminator:
                raise Malformed(f"{where}: {tail!r} after the block instead of the terminator")
        return bytes(payload)

    def _socket_block(self, after: str, sock: socket.socket, pending: bytearray) -> memoryview:
        """The block read straight from a pyvisa-py SOCKET session's socket.

        pyvisa-py's own reads cost a `select`, attribute look-ups and copies of its read-ahead
        buffer per call, and return at every terminator byte of the data. Here: what pyvisa-py
        had already received first, then `recv_into` one buffer of the declared length plus
        the terminator; every wait for data within `min(visa.timeout, what is left of the
        budget)`. Bytes received past the block go back to pyvisa-py's buffer.
        """
        where = f"{self.where}: {after}"
        terminator = self.instrument.settings.read_termination.encode("ascii")
        head = memoryview(bytearray(64))
        have = self._receive(sock, pending, head, 0, 2, after)
        digits = header_digits(bytes(head[:2]), where)
        have = self._receive(sock, pending, head, have, 2 + digits, after)
        length = payload_length(bytes(head[2 : 2 + digits]), where)
        total = length + len(terminator)
        buffer = memoryview(bytearray(total))
        start = 2 + digits
        got = min(have - start, total)
        buffer[:got] = head[start : start + got]
        pending[:0] = head[start + got : have]  # past the block: not ours
        self._receive(sock, pending, buffer, got, total, after, length)
        if buffer[length:] != terminator:
            tail = bytes(buffer[length:])
            raise Malformed(f"{where}: {tail!r} after the block instead of the terminator")
        return buffer[:length]

    def _receive(
        self,
        sock: socket.socket,
        pending: bytearray,
        view: memoryview,
        have: int,
        need: int,
        after: str,
        length: int | None = None,
    ) -> int:
        """Fill `view` from `have` to at least `need` bytes (at most its size); the new count.

        `length`: `view` is a block's payload of that many bytes, then the terminator: a
        silence after a terminator byte inside the payload is a message that ended early.
        """
        if pending:
            take = min(len(pending), len(view) - have)
            view[have : have + take] = pending[:take]
            del pending[:take]
            have += take
        limit = self.instrument.settings.timeout
        while have < need:
            try:  # no context manager per receive: errors are translated when they happen
                got = sock.recv_into(view[have:], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass  # nothing there yet: wait below
            except OSError as exc:
                _translate(exc, self.where, repr(after), limit)
            else:
                if not got:
                    raise PollError(f"{self.where}: {after!r}: connection closed by the instrument")
                have += got
                continue
            seconds = min(limit, self.remaining())
            if seconds <= 0:
                raise DeviceTimeout(
                    f"{self.where}: time budget used up before the answer to {after!r}"
                )
            try:
                _wait_ready(sock, select.POLLIN, seconds)
            except TimeoutError:
                terminator = self.instrument.settings.read_termination.encode("ascii")
                if (
                    length is not None
                    and terminator
                    and view[have - len(terminator) : have] == terminator
                ):
                    got = have - len(terminator)  # the terminator ended the message
                    raise Malformed(
                        f"{self.where}: {after}: truncated block: header declares {length} "
                        f"bytes, the message ended after {got}"
                    ) from None
                _translate(TimeoutError(), self.where, repr(after), seconds)
        return have

    def _truncated(self, where: str, length: int, payload: bytearray) -> Malformed:
        terminator = self.instrument.settings.read_termination.encode("ascii")
        got = len(payload) - (len(terminator) if terminator and payload.endswith(terminator) else 0)
        return Malformed(
            f"{where}: truncated block: header declares {length} bytes, the message ended "
            f"after {got}"
        )

    def _read_chunk(self, count: int) -> tuple[bytes, Any]:
        """One low-level read: up to `count` bytes and the VISA status (END, terminator...)."""
        resource = self.resource
        with resource.ignore_warning(constants.StatusCode.success_max_count_read):
            return resource.visalib.read(resource.session, count)

    def _read_exact(self, count: int, after: str) -> bytes:
        data = bytearray()
        while len(data) < count:
            seconds = self._limit(f"the answer to {after!r}")
            with visa_errors(self.where, repr(after), seconds):
                chunk, _ = self._read_chunk(count - len(data))
            data += chunk
        return bytes(data)


def _wait_ready(sock: socket.socket, events: int, seconds: float) -> None:
    """Wait until `sock` is ready for `events` (POLLIN, POLLOUT), at most `seconds`; else
    TimeoutError. The socket itself stays in pyvisa-py's blocking mode: a socket timeout
    would cost two mode changes and a poll on every send and receive, ready or not."""
    poller = select.poll()
    poller.register(sock, events)
    if seconds <= 0 or not poller.poll(math.ceil(seconds * 1000)):
        raise TimeoutError


def _translate(exc: BaseException, where: str, what: str, timeout: float) -> NoReturn:
    """Raise the `PollError` that `visa_errors` makes of `exc` (off the fast path)."""
    with visa_errors(where, what, timeout):
        raise exc


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

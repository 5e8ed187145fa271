"""`Job`: the I/O of one job on a `ScpiInstrument`, every error naming the resource and command.

Table-driven calls (`set`, `run`, `get`, `query_block`, `query_values`, `wait_complete`,
`wait_until`, `check_errors`) on top of the raw ones (`send`, `read_text`, `ask`, `read_block`).
Every read and write gets `min(visa.timeout, what is left of the job's budget)`. Commands go out
on the socket of a pyvisa-py SOCKET session where it can be reached (`socket_io`), through
pyvisa's write elsewhere; blocks are read by one of three readers: the socket's
(`socket_io.SocketBlockReader`), or pyvisa's reads with the termination on (serial, or a SOCKET
session this layer cannot reach) or off (VXI-11, which marks END) (`visa_block`).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from qkdtel.drivers.scpi import socket_io
from qkdtel.drivers.scpi.blocks import ascii_values, block_values
from qkdtel.drivers.scpi.transport import is_serial, visa_errors
from qkdtel.drivers.scpi.visa_block import read_visa_block
from qkdtel.sdk import ConnectionLost, DeviceTimeout, InstrumentError, Malformed

if TYPE_CHECKING:
    from qkdtel.drivers.scpi.instrument import ScpiInstrument

log = logging.getLogger(__name__)

MAX_ERRORS = 32
"""Error-queue entries read after one command at most (SCPI queues hold at least 2)."""


class ScpiError(InstrumentError):
    """The instrument reported errors (its error queue) after a command."""

    def __init__(self, where: str, command: str, errors: list[tuple[int, str]]):
        self.where = where
        self.command = command
        self.errors = errors
        listed = "; ".join(f'{code},"{message}"' for code, message in errors)
        super().__init__(f"{where}: {command!r} failed: {listed}")


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
            raise ConnectionLost(f"{self.where}: not connected")
        return resource

    def remaining(self) -> float:
        """Seconds left of the job's budget."""
        return self.deadline - time.monotonic()

    def arm_timeout(self, what: str, limit: float | None = None) -> float:
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
        seconds = self.arm_timeout(what, limit)
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

        On a pyvisa-py SOCKET session whose socket this layer can reach (`socket_io`), the
        bytes go out with a non-blocking `send` on it, waiting for room (an instrument that
        stopped reading) for at most `min(visa.timeout, what is left of the budget)`: pyvisa's
        write costs ~20 µs of attribute calls and a `select` per command, and has no send
        timeout at all. Elsewhere (VXI-11, serial, another backend): pyvisa's write. Errors
        are translated alike (`visa_errors`).
        """
        log.debug("%s <- %s", self.where, text)
        if self.where.endswith("::SOCKET"):
            direct = socket_io.socket_session(self.resource)
            if direct is not None:
                self._socket_send(text, direct[0])
                return
        seconds = self.arm_timeout(f"sending {text!r}")
        with visa_errors(self.where, f"sending {text!r}", seconds):
            self.resource.write(text)

    def _socket_send(self, text: str, sock: socket.socket) -> None:
        settings = self.instrument.settings
        seconds = min(settings.timeout, self.remaining())
        if seconds <= 0:
            raise DeviceTimeout(f"{self.where}: time budget used up before sending {text!r}")
        data = (text + settings.write_termination).encode(self.resource.encoding)
        socket_io.send(sock, data, self.where, f"sending {text!r}", seconds)

    def read_text(self, after: str) -> str:
        """Read one answer message (terminator stripped)."""
        seconds = self.arm_timeout(f"the answer to {after!r}")
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
        settings = self.instrument.settings
        if self.where.endswith("::SOCKET"):
            direct = socket_io.socket_session(self.resource)
            if direct is not None:
                terminator = settings.read_termination.encode("ascii")
                reader = socket_io.SocketBlockReader(
                    *direct, self.where, terminator, settings.timeout, self.deadline
                )
                return reader.read(after)
        if not self.where.endswith("::INSTR") or is_serial(self.where):
            # Serial: a terminator byte inside the payload is not END (see `visa_block`).
            # A raw socket whose session this layer cannot reach (pyvisa-py internals
            # changed): the termination stays on, as the only way to see where a cut message
            # ended (a read that times out returns nothing of what it received); slow but exact.
            return read_visa_block(self, after)
        # VXI-11/HiSLIP mark the end of a message (END): no terminator byte needed, and
        # pyvisa-py would stop a read at any terminator byte inside the binary payload.
        resource = self.resource
        termination = resource.read_termination
        resource.read_termination = None
        try:
            return read_visa_block(self, after)
        finally:
            resource.read_termination = termination

"""The raw-socket path of pyvisa-py `TCPIP::...::SOCKET` sessions: sends and binary blocks
straight on the session's socket, with a fallback to pyvisa's public API.

Decision (issue 14), kept on its merits: a 50,001-point trace (400,008 bytes) took 10.9 ms
through pyvisa's reads and takes 0.15-0.21 ms here, against a floor of 0.13-0.17 ms for the same
bytes read by plain socket calls on the same connection (bench/README.md, scpi_transfer.py).
pyvisa-py's own reads cost a `select`, attribute look-ups and copies of its read-ahead buffer
per call, return at every terminator byte inside binary data, and cap every `recv` at 4 KiB;
its writes have no send timeout at all. A 70x gain on every OSA and OTDR trace earns one module.

The price is reading three pyvisa-py internals, named once below (`_SESSIONS`, `_SOCKET`,
`_READ_AHEAD`): the library's session table, a session's socket and the bytes it read ahead.
`socket_session` checks them on every use; when a pyvisa-py release renames or retypes any of
them it returns None, logs that once per process, and the layer uses pyvisa's public API
instead (`resource.write`, `resource.read`, `visalib.read` for blocks): slower (and, if the
socket itself cannot be reached, Nagle's algorithm stays on: ~40 ms per command), never wrong.
tests/test_scpi_layer.py proves that path against the simulated instrument.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import time
from typing import Any, NoReturn

from qkdtel.drivers.scpi.blocks import header_digits, payload_length, truncated_block
from qkdtel.drivers.scpi.transport import visa_errors
from qkdtel.sdk import ConnectionLost, DeviceTimeout, Malformed

log = logging.getLogger(__name__)

# The pyvisa-py internals this module reads (pyvisa-py 0.7-0.8): the library's session table,
# a TCPIP SOCKET session's socket, and the bytes it received past the last answer it returned.
_SESSIONS = "sessions"
_SOCKET = "interface"
_READ_AHEAD = "_pending_buffer"

_warned = False


def _session(resource: Any) -> Any:
    sessions = getattr(resource.visalib, _SESSIONS, None)
    return sessions.get(resource.session) if isinstance(sessions, dict) else None


def socket_session(resource: Any) -> tuple[socket.socket, bytearray] | None:
    """The socket of a pyvisa-py TCPIP SOCKET session and the bytes it has read ahead.

    A reader that takes the socket over must start with those read-ahead bytes, and leave
    there what it received past its answer. None when the internals are not where this module
    expects them (logged once per process): use pyvisa's public API then.
    """
    session = _session(resource)
    sock = getattr(session, _SOCKET, None)
    pending = getattr(session, _READ_AHEAD, None)
    if isinstance(sock, socket.socket) and isinstance(pending, bytearray):
        return sock, pending
    _warn_once(session, sock, pending)
    return None


def _warn_once(session: Any, sock: Any, pending: Any) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    missing = [
        name
        for name, value, kind in (
            (_SESSIONS, session, object),
            (_SOCKET, sock, socket.socket),
            (_READ_AHEAD, pending, bytearray),
        )
        if not isinstance(value, kind)
    ]
    log.warning(
        "pyvisa-py internals changed (%s not found as expected): SOCKET sessions use pyvisa's "
        "public API, slower binary blocks",
        ", ".join(missing),
    )


def tune_socket(resource: Any, chunk_size: int) -> None:
    """Nagle's algorithm off and `chunk_size` bytes per receive on a raw-socket session.

    With Nagle on (NI-VISA turns it off by default), a command followed at once by
    `SYSTem:ERRor?` waits for the instrument's delayed ACK (40 ms on Linux) every time.
    pyvisa-py 0.8 refuses VI_ATTR_TCPIP_NODELAY on SOCKET sessions (its setter is not wired),
    so the option is set on its socket directly. pyvisa-py also caps every `recv` at 4096
    bytes (`max_recv_size`) whatever the read asks for: raised to the configured chunk size.
    """
    session = _session(resource)
    sock = getattr(session, _SOCKET, None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if isinstance(getattr(session, "max_recv_size", None), int):
        session.max_recv_size = chunk_size


def send(sock: socket.socket, data: bytes, where: str, what: str, seconds: float) -> None:
    """All of `data` with non-blocking sends, waiting for room (an instrument that stopped
    reading) for at most `seconds` in all; errors as `visa_errors` makes them."""
    view = memoryview(data)
    give_up = time.monotonic() + seconds
    try:
        while view:
            try:
                view = view[sock.send(view, socket.MSG_DONTWAIT) :]
            except BlockingIOError:  # the instrument is not reading: wait for room
                _wait_ready(sock, select.POLLOUT, give_up - time.monotonic())
    except OSError as exc:
        _translate(exc, where, what, seconds)


class SocketBlockReader:
    """A definite-length block read straight from a session's socket.

    What pyvisa-py had already received comes first, then `recv_into` one buffer of the
    declared length plus the terminator; every wait for data is bounded by
    `min(limit, what is left until deadline)`. Bytes received past the block go back to
    pyvisa-py's read-ahead buffer. Terminator bytes inside the data never stop a read; a silence
    right after a terminator byte in mid-data is a truncated block (Malformed), any other
    silence a DeviceTimeout.
    """

    def __init__(
        self,
        sock: socket.socket,
        pending: bytearray,
        where: str,
        terminator: bytes,
        limit: float,
        deadline: float,
    ):
        self.sock = sock
        self.pending = pending
        self.where = where
        self.terminator = terminator
        self.limit = limit
        self.deadline = deadline

    def read(self, after: str) -> memoryview:
        """The payload of the block answering `after` (the terminator checked and dropped)."""
        where = f"{self.where}: {after}"
        head = memoryview(bytearray(64))
        have = self._receive(head, 0, 2, after)
        digits = header_digits(bytes(head[:2]), where)
        have = self._receive(head, have, 2 + digits, after)
        length = payload_length(bytes(head[2 : 2 + digits]), where)
        total = length + len(self.terminator)
        buffer = memoryview(bytearray(total))
        start = 2 + digits
        got = min(have - start, total)
        buffer[:got] = head[start : start + got]
        self.pending[:0] = head[start + got : have]  # past the block: not ours
        self._receive(buffer, got, total, after, length)
        if buffer[length:] != self.terminator:
            tail = bytes(buffer[length:])
            raise Malformed(f"{where}: {tail!r} after the block instead of the terminator")
        return buffer[:length]

    def _receive(
        self, view: memoryview, have: int, need: int, after: str, length: int | None = None
    ) -> int:
        """Fill `view` from `have` to at least `need` bytes (at most its size); the new count.

        `length`: `view` is a block's payload of that many bytes, then the terminator: a
        silence after a terminator byte inside the payload is a message that ended early.
        """
        pending, sock = self.pending, self.sock
        if pending:
            take = min(len(pending), len(view) - have)
            view[have : have + take] = pending[:take]
            del pending[:take]
            have += take
        while have < need:
            try:  # no context manager per receive: errors are translated when they happen
                got = sock.recv_into(view[have:], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass  # nothing there yet: wait below
            except OSError as exc:
                _translate(exc, self.where, repr(after), self.limit)
            else:
                if not got:
                    raise ConnectionLost(
                        f"{self.where}: {after!r}: connection closed by the instrument"
                    )
                have += got
                continue
            self._wait(view, have, after, length)
        return have

    def _wait(self, view: memoryview, have: int, after: str, length: int | None) -> None:
        seconds = min(self.limit, self.deadline - time.monotonic())
        if seconds <= 0:
            raise DeviceTimeout(f"{self.where}: time budget used up before the answer to {after!r}")
        try:
            _wait_ready(self.sock, select.POLLIN, seconds)
        except TimeoutError as exc:
            size = len(self.terminator)
            if length is not None and size and view[have - size : have] == self.terminator:
                # the terminator ended the message
                raise truncated_block(f"{self.where}: {after}", length, have - size) from exc
            _translate(TimeoutError(), self.where, repr(after), seconds)


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

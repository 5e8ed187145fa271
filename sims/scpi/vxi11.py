"""VXI-11 (TCP/IP Instrument Protocol, VXIbus VXI-11 rev 1.0) for the simulated instruments.

The core channel only: ONC RPC (RFC 5531) over TCP with record marking, program 0x0607AF
version 1, XDR-encoded (RFC 4506) -- what `TCPIP::host,port::INSTR` resources speak in
pyvisa-py, which connects to the given port without asking a portmapper (a real instrument's
portmapper sits on port 111, which a test cannot take). Procedures: create_link, device_write,
device_read, device_readstb, device_trigger, device_clear, device_remote, device_local,
device_lock, device_unlock, destroy_link. No abort or interrupt channel.

What makes it worth simulating: messages end with END (no guessing from a terminator byte),
reads honour the client's io_timeout, and `device_clear` is a real out-of-band device clear
(input and output discarded, the message being executed abandoned) that a stalled parser still
obeys -- the recovery path of the client layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qkdtel.sims.scpi.tcp import like_an_instrument

if TYPE_CHECKING:
    from qkdtel.sims.scpi.server import ScpiServer

CORE_PROGRAM, CORE_VERSION = 0x0607AF, 1
CREATE_LINK, DEVICE_WRITE, DEVICE_READ, DEVICE_READSTB = 10, 11, 12, 13
DEVICE_TRIGGER, DEVICE_CLEAR, DEVICE_REMOTE, DEVICE_LOCAL = 14, 15, 16, 17
DEVICE_LOCK, DEVICE_UNLOCK, DESTROY_LINK = 18, 19, 23
FLAG_END, FLAG_TERMCHAR = 8, 128
REASON_REQCNT, REASON_CHR, REASON_END = 1, 2, 4
ERR_NONE, ERR_INVALID_LINK, ERR_IO_TIMEOUT = 0, 4, 15
MAX_RECV_SIZE = 1 << 20

# ONC RPC
CALL, REPLY, MSG_ACCEPTED = 0, 1, 0
SUCCESS, PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL, GARBAGE_ARGS = 0, 1, 2, 3, 4


class _Reader:
    """XDR decoding of one call's arguments."""

    def __init__(self, data: bytes):
        self.data = data
        self.at = 0

    def uint(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.at)
        self.at += 4
        return value

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.at)
        self.at += 4
        return value

    def opaque(self) -> bytes:
        length = self.uint()
        value = self.data[self.at : self.at + length]
        if len(value) < length:
            raise struct.error("opaque data runs past the record")
        self.at += length + (-length % 4)
        return value


def _opaque(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data + b"\0" * (-len(data) % 4)


def _words(*values: int) -> bytes:
    return b"".join(struct.pack(">i" if v < 0 else ">I", v) for v in values)


@dataclass
class _Link:
    """One client link: its pending input, output messages and the task executing them."""

    id: int
    input: bytearray = field(default_factory=bytearray)
    output: deque[bytearray] = field(default_factory=deque)
    messages: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task | None = None


class Vxi11Service:
    """The VXI-11 core channel of one simulated instrument."""

    def __init__(self, instrument: ScpiServer):
        self.instrument = instrument
        self._links: dict[int, _Link] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port = 0
        self._procedures: dict[int, Callable[[_Reader], object]] = {
            CREATE_LINK: self._create_link,
            DEVICE_WRITE: self._write,
            DEVICE_READ: self._read,
            DEVICE_READSTB: self._readstb,
            DEVICE_TRIGGER: self._link_only,
            DEVICE_CLEAR: self._clear,
            DEVICE_REMOTE: self._link_only,
            DEVICE_LOCAL: self._link_only,
            DEVICE_LOCK: self._link_only,
            DEVICE_UNLOCK: self._link_only,
            DESTROY_LINK: self._destroy_link,
        }

    async def start(self, host: str, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._connection, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        workers = [link.worker for link in self._links.values() if link.worker is not None]
        for task in [*workers, *self._tasks]:
            task.cancel()
        await asyncio.gather(*workers, *self._tasks, return_exceptions=True)
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- RPC framing ---------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        like_an_instrument(writer)
        try:
            while True:
                record = await self._record(reader)
                reply = await self._call(record)
                if reply is not None:
                    writer.write(struct.pack(">I", 0x80000000 | len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (see ScpiServer._on_tcp)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _record(reader: asyncio.StreamReader) -> bytes:
        data = bytearray()
        while True:
            (header,) = struct.unpack(">I", await reader.readexactly(4))
            data += await reader.readexactly(header & 0x7FFFFFFF)
            if header & 0x80000000:
                return bytes(data)

    async def _call(self, record: bytes) -> bytes | None:
        args = _Reader(record)
        try:
            xid, kind = args.uint(), args.uint()
            if kind != CALL:
                return None
            rpc_version, program, version, procedure = (args.uint() for _ in range(4))
            for _ in range(2):  # credentials and verifier (AUTH_NONE expected, not checked)
                args.uint()
                args.opaque()
        except struct.error:
            return None  # not even a call header: nothing to answer to
        head = _words(xid, REPLY, MSG_ACCEPTED, 0, 0)  # accepted, null verifier
        if rpc_version != 2 or program != CORE_PROGRAM:
            return head + _words(PROG_UNAVAIL)
        if version != CORE_VERSION:
            return head + _words(PROG_MISMATCH, CORE_VERSION, CORE_VERSION)
        handler = self._procedures.get(procedure)
        if handler is None:
            return head + _words(PROC_UNAVAIL)
        try:
            result = handler(args)
            if asyncio.iscoroutine(result):
                result = await result
        except struct.error:
            return head + _words(GARBAGE_ARGS)
        assert isinstance(result, bytes)
        return head + _words(SUCCESS) + result

    # -- procedures ----------------------------------------------------------------------------

    def _create_link(self, args: _Reader) -> bytes:
        args.int()  # client id
        args.uint()  # lock the device
        args.uint()  # lock timeout
        args.opaque()  # device name (inst0...): one device here
        link = _Link(self.instrument.new_connection())
        link.worker = asyncio.ensure_future(self._execute(link))
        self._links[link.id] = link
        return _words(ERR_NONE, link.id, 0, MAX_RECV_SIZE)  # no abort channel

    async def _execute(self, link: _Link) -> None:
        """Run the link's messages in order, queueing each response as one output message."""
        while True:
            message = await link.messages.get()
            response = await self.instrument.execute(link.id, message)
            if response is not None:
                link.output.append(bytearray(response))
                link.ready.set()

    def _write(self, args: _Reader) -> bytes:
        link = self._links.get(args.int())
        args.uint()  # io timeout: input is taken at once
        args.uint()  # lock timeout
        flags, data = args.int(), args.opaque()
        if link is None:
            return _words(ERR_INVALID_LINK, 0)
        link.input += data
        if flags & FLAG_END:
            text = link.input.decode("ascii", "replace").strip()
            link.input.clear()
            if text:
                link.messages.put_nowait(text)
        return _words(ERR_NONE, len(data))

    async def _read(self, args: _Reader) -> bytes:
        link = self._links.get(args.int())
        size, io_timeout = args.uint(), args.uint()
        args.uint()  # lock timeout
        flags, term_char = args.int(), args.int()
        if link is None:
            return _words(ERR_INVALID_LINK, 0) + _opaque(b"")
        if not link.output:
            link.ready.clear()
            try:
                await asyncio.wait_for(link.ready.wait(), io_timeout / 1000)
            except TimeoutError:
                return _words(ERR_IO_TIMEOUT, 0) + _opaque(b"")
        message = link.output[0]
        take = min(size, len(message))
        reason = REASON_REQCNT if take == size else 0
        if flags & FLAG_TERMCHAR:
            stop = message.find(bytes([term_char & 0xFF]), 0, take)
            if stop >= 0:
                take, reason = stop + 1, REASON_CHR
        data = bytes(message[:take])
        del message[:take]
        if not message:
            link.output.popleft()
            reason |= REASON_END
        return _words(ERR_NONE, reason) + _opaque(data)

    def _readstb(self, args: _Reader) -> bytes:
        link = self._links.get(args.int())
        if link is None:
            return _words(ERR_INVALID_LINK, 0)
        return _words(ERR_NONE, self.instrument.status_byte())

    def _link_only(self, args: _Reader) -> bytes:
        """Procedures that only need a valid link here (trigger, remote, local, locks)."""
        return _words(ERR_NONE if args.int() in self._links else ERR_INVALID_LINK)

    def _clear(self, args: _Reader) -> bytes:
        """Device clear: discard input, output and the message being executed."""
        link = self._links.get(args.int())
        if link is None:
            return _words(ERR_INVALID_LINK)
        if link.worker is not None:
            link.worker.cancel()
        link.input.clear()
        link.output.clear()
        link.messages = asyncio.Queue()
        link.worker = asyncio.ensure_future(self._execute(link))
        self.instrument.device_clear()
        return _words(ERR_NONE)

    def _destroy_link(self, args: _Reader) -> bytes:
        link = self._links.pop(args.int(), None)
        if link is None:
            return _words(ERR_INVALID_LINK)
        self._drop(link)
        return _words(ERR_NONE)

    @staticmethod
    def _drop(link: _Link) -> None:
        if link.worker is not None:
            link.worker.cancel()

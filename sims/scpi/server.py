"""`ScpiServer`: base class of the simulated SCPI instruments (OSA, OTDR, power meters).

A real protocol server, not a mock: the driver under test talks to it through pyvisa-py like to
the instrument. What the base does, so a simulated instrument only declares its commands:

- transports: a TCP listener (`TCPIP::127.0.0.1::<port>::SOCKET`); VXI-11 on a port of its own
  (`TCPIP::127.0.0.1,<port>::INSTR`, see `vxi11.py`); and, for RS-232 instruments, a
  pseudo-terminal whose slave side is a real serial device (`ASRL/dev/pts/N::INSTR`);
- parsing of program messages: `;`-separated units, a header and comma-separated arguments,
  SCPI short/long keyword forms (`:SENS:WAV:CENT` = `:SENSe:WAVelength:CENTer`), optional
  nodes in brackets (`[:SENSe]`), case-insensitive, leading colon optional;
- dispatch through a table: `self.add("[:SENSe]:WAVelength:CENTer", write=fn, query=fn)`;
  handlers get the argument list and return text, a `Block`, or nothing, or a coroutine of one;
- IEEE 488.2 common commands and status: `*IDN?`, `*CLS`, `*RST`, `*OPC?` (answers once
  `pending()` operations complete), `*OPC`, `*WAI`, `*ESR?`, `*STB?`, `:SYSTem:ERRor?` with a
  real error queue (-113 undefined header, -109 missing parameter, -222 data out of range,
  -350 queue overflow...) and the event status bits those errors set;
- definite-length binary blocks (`Block`), encoded exactly as the client layer decodes them;
- fault knobs (`Faults`), switchable while serving: `stall` (reads and logs commands, never
  executes or answers them), `errors` (a command adds an error-queue entry instead of
  executing), `truncate_blocks` ("cut": the header promises more bytes than are sent, then the
  message ends; "short": a well-formed block holding only half the values);
- a log of every received program message unit (`received()`), for tests to assert on.

Serve it from a test or a CLI with `ServerThread([server, ...])` (own thread and event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import re
import threading
import tty
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from qkdtel.drivers.scpi.blocks import encode_block
from qkdtel.sims.background import BackgroundLoop
from qkdtel.sims.scpi.tcp import like_an_instrument
from qkdtel.sims.scpi.vxi11 import Vxi11Service

log = logging.getLogger(__name__)

Answer = str | bytes | None
Handler = Callable[[list[str]], "Answer | Awaitable[Answer]"]

ERROR_QUEUE_SIZE = 30
# IEEE 488.2 standard event status register bits
ESR_OPC, ESR_QUERY, ESR_DEVICE, ESR_EXECUTION, ESR_COMMAND = 1, 4, 8, 16, 32


class ScpiFailure(Exception):
    """Raised by a handler: the command fails with this SCPI error (code, message)."""

    def __init__(self, code: int, message: str):
        super().__init__(f'{code},"{message}"')
        self.code = code
        self.message = message


@dataclass
class Faults:
    """Fault knobs; plain attributes, safe to flip from another thread while serving."""

    stall: bool = False
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Canonical header (as registered, e.g. `[:SENSe]:WAVelength:CENTer`) -> error it causes."""
    truncate_blocks: Literal["cut", "short"] | None = None


@dataclass(frozen=True)
class Block:
    """A binary answer: `payload` of numbers `itemsize` bytes wide, sent as an IEEE 488.2 block."""

    payload: bytes
    itemsize: int = 8


@dataclass(frozen=True)
class Received:
    """One program message unit as the instrument received it."""

    connection: int
    text: str


def header_pattern(spec: str) -> re.Pattern[str]:
    """Regex of a SCPI header: each keyword in short (capitals) or long form, `[:X]` optional.

    `[:SENSe]:WAVelength:CENTer` matches `:SENS:WAV:CENT`, `sense:wavelength:center`,
    `:WAV:CENTER`; `*IDN` and native mnemonics (`CNT`) match themselves, case-insensitively.
    Headers are matched after `normal_header` put a colon in front.
    """
    if spec.startswith("*"):
        return re.compile(f"^{re.escape(spec)}$", re.IGNORECASE)
    parts: list[str] = []
    for optional, keyword in re.findall(r"(\[?):?([A-Za-z0-9]+)\]?", spec):
        if keyword.isupper() or keyword.isdigit():
            alternatives = re.escape(keyword)
        else:
            short = "".join(c for c in keyword if c.isupper() or c.isdigit())
            alternatives = f"{re.escape(short)}|{re.escape(keyword)}"
        node = f":(?:{alternatives})"
        parts.append(f"(?:{node})?" if optional else node)
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE)


def normal_header(header: str) -> str:
    """`SENS:WAV:CENT` -> `:SENS:WAV:CENT` (common commands `*XXX` stay as they are)."""
    return header if header.startswith((":", "*")) else ":" + header


@dataclass
class _Entry:
    spec: str
    pattern: re.Pattern[str]
    write: Handler | None
    query: Handler | None


def split_units(message: str) -> list[str]:
    """Program message units (`;`-separated, quotes respected), stripped, empty ones dropped."""
    units, current, quote = [], [], ""
    for char in message:
        if quote:
            current.append(char)
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
            current.append(char)
        elif char == ";":
            units.append("".join(current))
            current = []
        else:
            current.append(char)
    units.append("".join(current))
    return [u.strip() for u in units if u.strip()]


def split_arguments(text: str) -> list[str]:
    """Comma-separated arguments, quotes respected and removed from string arguments."""
    if not text.strip():
        return []
    args, current, quote = [], [], ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
            else:
                current.append(char)
        elif char in "'\"":
            quote = char
        elif char == ",":
            args.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    args.append("".join(current).strip())
    return args


class ScpiServer:
    """A simulated SCPI instrument; subclasses `add()` their commands (see the module doc)."""

    identity = "QKDTEL,SIMULATED-SCPI,0,1.0"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        read_termination: bytes = b"\n",
        write_termination: bytes = b"\n",
        faults: Faults | None = None,
    ):
        self.host = host
        self.port = port
        self.read_termination = read_termination
        self.write_termination = write_termination
        self.faults = faults or Faults()
        self._table: list[_Entry] = []
        self._errors: deque[tuple[int, str]] = deque()
        self.esr = 0
        self.device_clears = 0
        self._log: list[Received] = []
        self._log_lock = threading.Lock()
        self._connections = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._pty: tuple[int, int] | None = None
        self.pty_path: str | None = None
        self._vxi11: Vxi11Service | None = None
        self._add_common()

    # -- the table -----------------------------------------------------------------------------

    def add(self, spec: str, *, write: Handler | None = None, query: Handler | None = None) -> None:
        """Register a header: `write` handles `HEADER args`, `query` handles `HEADER? args`."""
        self._table.append(_Entry(spec, header_pattern(spec), write, query))

    def _add_common(self) -> None:
        self.add("*IDN", query=lambda args: self.identity)
        self.add("*CLS", write=lambda args: self.clear_status())
        self.add("*RST", write=lambda args: self.reset())
        self.add("*OPC", write=self._opc_write, query=self._opc_query)
        self.add("*WAI", write=self._wait)
        self.add("*ESR", query=self._esr_query)
        self.add("*STB", query=lambda args: str(self.status_byte()))
        self.add("[:SYSTem]:ERRor[:NEXT]", query=lambda args: self._pop_error())

    def lookup(self, header: str) -> _Entry | None:
        """The table entry whose pattern matches `header` (without `?`)."""
        header = normal_header(header)
        return next((e for e in self._table if e.pattern.match(header)), None)

    # -- status model (subclasses extend clear_status/reset/pending) ---------------------------

    def push_error(self, code: int, message: str) -> None:
        """Add an entry to the error queue and set the matching event status bit."""
        if code <= -100 and code > -200:
            self.esr |= ESR_COMMAND
        elif code <= -200 and code > -300:
            self.esr |= ESR_EXECUTION
        elif code <= -300 and code > -400:
            self.esr |= ESR_DEVICE
        elif code <= -400:
            self.esr |= ESR_QUERY
        if len(self._errors) >= ERROR_QUEUE_SIZE:
            self._errors[-1] = (-350, "Queue overflow")
            return
        self._errors.append((code, message))

    def errors(self) -> list[tuple[int, str]]:
        """The error queue now (not consumed)."""
        return list(self._errors)

    def _pop_error(self) -> str:
        code, message = self._errors.popleft() if self._errors else (0, "No error")
        return f'{code},"{message}"'

    def clear_status(self) -> None:
        """`*CLS`: error queue and event registers emptied."""
        self._errors.clear()
        self.esr = 0

    def reset(self) -> None:
        """`*RST`: factory settings; subclasses restore theirs."""

    def device_clear(self) -> None:
        """A device clear (VXI-11 `device_clear`) arrived; the transport already discarded the
        link's input and output. Counted in `device_clears`; subclasses may extend it."""
        self.device_clears += 1

    def pending(self) -> Awaitable[None] | None:
        """An awaitable that completes with the running operations (None when idle)."""
        return None

    def status_byte(self) -> int:
        """`*STB?`: bit 2 error queue not empty, bit 5 event status summary."""
        return (4 if self._errors else 0) | (32 if self.esr else 0)

    async def _opc_query(self, args: list[str]) -> str:
        busy = self.pending()
        if busy is not None:
            await busy
        return "1"

    async def _opc_write(self, args: list[str]) -> None:
        busy = self.pending()
        if busy is not None:
            await busy
        self.esr |= ESR_OPC

    async def _wait(self, args: list[str]) -> None:
        busy = self.pending()
        if busy is not None:
            await busy

    def _esr_query(self, args: list[str]) -> str:
        value, self.esr = self.esr, 0
        return str(value)

    # -- answers -------------------------------------------------------------------------------

    def block(self, payload: bytes, itemsize: int = 8) -> Block:
        """A binary answer (see `Faults.truncate_blocks` for how it may be damaged)."""
        return Block(payload, itemsize)

    def _encode(self, answer: str | Block) -> bytes:
        if isinstance(answer, str):
            return answer.encode("ascii")
        payload = answer.payload
        mode = self.faults.truncate_blocks
        if mode == "short":
            values = len(payload) // answer.itemsize
            return encode_block(payload[: values // 2 * answer.itemsize])
        if mode == "cut":
            return encode_block(payload)[: 2 + len(str(len(payload))) + len(payload) // 2]
        return encode_block(payload)

    # -- execution -----------------------------------------------------------------------------

    def received(self) -> list[Received]:
        """Every program message unit received so far, in order."""
        with self._log_lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    def new_connection(self) -> int:
        """A number for a new client connection (TCP, VXI-11 link), as logged in `received`."""
        return next(self._connections)

    async def execute(self, connection: int, message: str) -> bytes | None:
        """Run one program message; the response message, or None when nothing is to be sent."""
        answers: list[bytes] = []
        for unit in split_units(message):
            with self._log_lock:
                self._log.append(Received(connection, unit))
            if self.faults.stall:
                continue
            answer = await self._execute_unit(unit)
            if answer is not None:
                answers.append(self._encode(answer))
        if not answers:
            return None
        return b";".join(answers) + self.write_termination

    async def _execute_unit(self, unit: str) -> str | Block | None:
        header, _, rest = unit.partition(" ")
        is_query = header.endswith("?")
        header = header.removesuffix("?")
        entry = self.lookup(header)
        handler = None if entry is None else (entry.query if is_query else entry.write)
        if handler is None:
            self.push_error(-113, "Undefined header")
            return None
        injected = self.faults.errors.get(entry.spec)
        if injected is not None:
            self.push_error(*injected)
            return None
        try:
            result = handler(split_arguments(rest))
            if inspect.isawaitable(result):
                result = await result
        except ScpiFailure as failure:
            self.push_error(failure.code, failure.message)
            return None
        if is_query and result is None:
            return None
        return result

    # -- transports ----------------------------------------------------------------------------

    @property
    def resource(self) -> str:
        """VISA resource name of the TCP listener."""
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    @property
    def instr_resource(self) -> str:
        """VISA resource name of the VXI-11 service (after `start(vxi11=True)`)."""
        if self._vxi11 is None:
            raise RuntimeError("the server was started without VXI-11")
        return f"TCPIP::{self.host},{self._vxi11.port}::INSTR"

    @property
    def serial_resource(self) -> str:
        """VISA resource name of the pseudo-terminal (after `start(pty=True)`)."""
        if self.pty_path is None:
            raise RuntimeError("the server was started without a pty")
        return f"ASRL{self.pty_path}::INSTR"

    async def start(self, pty: bool = False, vxi11: bool = False) -> None:
        """Listen on TCP (and serve a pty when `pty`, VXI-11 on a port of its own when `vxi11`)."""
        self._server = await asyncio.start_server(self._on_tcp, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if pty:
            await self._start_pty()
        if vxi11:
            self._vxi11 = Vxi11Service(self)
            await self._vxi11.start(self.host)

    async def stop(self) -> None:
        """Close the listener, every connection and the pty."""
        if self._server is not None:
            self._server.close()
        if self._vxi11 is not None:
            await self._vxi11.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._pty is not None:
            for fd in self._pty:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pty = None

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        like_an_instrument(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() ends open connections; asyncio's stream callback would log a cancelled
            # connection task as an error, so it ends normally instead.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _start_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        # The server keeps the slave open as well: without it a client closing the port would
        # make reads of the master fail (EIO) and the "instrument" would vanish.
        self._pty = (master, slave)
        self.pty_path = os.ttyname(slave)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(master), "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(os.dup(master), "wb", 0)
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = self.new_connection()
        while True:
            try:
                line = await reader.readuntil(self.read_termination)
            except asyncio.IncompleteReadError:
                return
            message = line[: -len(self.read_termination)].decode("ascii", "replace").strip()
            if not message:
                continue
            response = await self.execute(connection, message)
            if response is not None:
                writer.write(response)
                await writer.drain()


class ServerThread(BackgroundLoop):
    """Simulated instruments served from a daemon thread with its own event loop.

    `with ServerThread([osa]) as thread:` -- the servers listen once the block is entered;
    `thread.call(fn)` runs `fn()` on their loop (to touch state that handlers also touch).
    """

    what = "simulated instruments"
    thread_name = "qkdtel-scpi-sims"

    def __init__(
        self,
        servers: Iterable[ScpiServer],
        pty: bool = False,
        vxi11: bool = False,
        start_timeout: float = 10,
    ):
        super().__init__(start_timeout, stop_timeout=10)
        self.servers = list(servers)
        self.pty = pty
        self.vxi11 = vxi11

    async def _start_serving(self) -> None:
        for server in self.servers:
            await server.start(pty=self.pty, vxi11=self.vxi11)

    async def _stop_serving(self) -> None:
        for server in self.servers:
            await server.stop()

"""A simulated bench optical power meter on a serial line (a pseudo-terminal), for the
`powermeter` driver's tests and for the bench without hardware.

`PowerMeterSim` speaks the SCPI of a Keysight 8163B lightwave multimeter with an optical head in
slot 1 (`:SENSe1:CHANnel1:POWer:WAVelength`, `:SENSe1:CHANnel1:POWer:UNIT`, `...:ATIMe`,
`:READ1:CHANnel1:POWer?`); it reads a source of `source_dbm` through a fibre of `loss_db`
(by default a topology link's C-band loss, 50 % more in the O-band as the topology says), with
a little noise.

`SerialLine` carries it over a pty pair whose slave side is a real tty, reached through a
stable symlink (`path`, like /dev/serial/by-id/... for a USB adapter), so the driver's real
serial code path (pyvisa-py ASRL -> pyserial -> termios) runs. `pull()` closes the pty like a
pulled cable or an unplugged USB adapter; `replug()` gives a new pty behind the same path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import threading
import tty
from collections.abc import Callable
from pathlib import Path

from qkdtel.sims.cli_common import stop_on_signal
from qkdtel.sims.scpi import ScpiFailure, ScpiServer
from qkdtel.sims.topology import Link, TopologyError, load_topology

SLOT, CHANNEL = 1, 1
WAVELENGTH_NM = (800.0, 1700.0)
UNITS = {"0": "DBM", "DBM": "DBM", "1": "W", "WATT": "W", "W": "W"}


class PowerMeterSim(ScpiServer):
    """The meter (see the module docstring); attributes may be changed while serving."""

    identity = "Keysight Technologies,8163B,QKDTEL-SIM,V5.25(72637)"

    def __init__(
        self,
        loss_db: float = 10.0,
        source_dbm: float = 0.0,
        seed: int = 0,
        live_loss: Callable[[float], float] | None = None,
        **kwargs,
    ):
        """`live_loss`, if given, is the fibre's loss (dB) at a wavelength (nm) at each reading,
        as a model outside the meter has it (the twin's); it replaces `loss_db` and the O-band
        factor."""
        super().__init__(**kwargs)
        self.loss_db = loss_db
        self.live_loss = live_loss
        self.o_band_factor = 1.5
        self.source_dbm = source_dbm
        self._rng = random.Random(seed)
        self.reset()
        head = f":SENSe{SLOT}:CHANnel{CHANNEL}:POWer"
        self.add(f"{head}:WAVelength", write=self._set_wavelength, query=self._get_wavelength)
        self.add(f"{head}:UNIT", write=self._set_unit, query=lambda a: self.unit)
        self.add(f"{head}:ATIMe", write=self._set_atime, query=lambda a: f"{self.atime_s:.6E}")
        self.add(f":READ{SLOT}:CHANnel{CHANNEL}:POWer", query=self._read)
        self.add(f":FETCh{SLOT}:CHANnel{CHANNEL}:POWer", query=self._read)

    @classmethod
    def for_link(cls, link: Link, **kwargs) -> PowerMeterSim:
        """A meter at the far end of `link`, 0 dBm launched at the near end."""
        return cls(loss_db=link.loss_db, **kwargs)

    def reset(self) -> None:
        self.wavelength_nm = 1550.0
        self.unit = "DBM"
        self.atime_s = 0.1

    def expected_dbm(self) -> float:
        """The power the meter reads, noise aside."""
        if self.live_loss is not None:
            return self.source_dbm - self.live_loss(self.wavelength_nm)
        loss = self.loss_db * (self.o_band_factor if self.wavelength_nm < 1400 else 1.0)
        return self.source_dbm - loss

    def _set_wavelength(self, args: list[str]) -> None:
        if not args:
            raise ScpiFailure(-109, "Missing parameter")
        text = args[0].upper().removesuffix("NM")
        try:
            value = float(text) if args[0].upper().endswith("NM") else float(text) * 1e9
        except ValueError:
            raise ScpiFailure(-104, "Data type error") from None
        if not WAVELENGTH_NM[0] <= value <= WAVELENGTH_NM[1]:
            raise ScpiFailure(-222, "Data out of range")
        self.wavelength_nm = value

    def _get_wavelength(self, args: list[str]) -> str:
        return f"{self.wavelength_nm * 1e-9:.6E}"

    def _set_unit(self, args: list[str]) -> None:
        token = args[0].upper() if args else ""
        if token not in UNITS:
            raise ScpiFailure(-224, "Illegal parameter value")
        self.unit = UNITS[token]

    def _set_atime(self, args: list[str]) -> None:
        try:
            value = float(args[0].upper().removesuffix("S"))
        except (IndexError, ValueError):
            raise ScpiFailure(-104, "Data type error") from None
        if not 1e-4 <= value <= 10:
            raise ScpiFailure(-222, "Data out of range")
        self.atime_s = value

    def _read(self, args: list[str]) -> str:
        dbm = self.expected_dbm() + self._rng.gauss(0.0, 0.01)
        value = dbm if self.unit == "DBM" else 10 ** (dbm / 10) * 1e-3
        return f"{value:+.6E}"


class SerialLine:
    """Serves a `PowerMeterSim` over a pty behind the stable path `path` (own thread)."""

    def __init__(self, server: ScpiServer, path: Path):
        self.server = server
        self.path = Path(path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fds: tuple[int, int] | None = None
        self._buffer = b""
        self._connection = 0

    @property
    def resource(self) -> str:
        """The VISA resource name of the line."""
        return f"ASRL{self.path}::INSTR"

    def start(self) -> SerialLine:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.call_soon(ready.set)
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="qkdtel-serial-meter", daemon=True)
        self._thread.start()
        ready.wait(5)
        self.replug()
        return self

    def _call(self, fn) -> None:
        assert self._loop is not None
        done = threading.Event()

        def wrapped() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(wrapped)
        done.wait(5)

    def replug(self) -> None:
        """Connect the meter through a new pty behind `path`."""
        self._call(self._plug)

    def pull(self) -> None:
        """Close the pty: the line is gone, as if the cable were pulled."""
        self._call(self._unplug)

    def _plug(self) -> None:
        self._unplug()
        master, slave = os.openpty()
        tty.setraw(slave)  # the server's end of a serial line is a raw byte stream
        self._fds = (master, slave)
        self._buffer = b""
        self._connection += 1
        link = self.path.with_name(self.path.name + ".new")
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(slave))
        os.replace(link, self.path)
        assert self._loop is not None
        self._loop.add_reader(master, self._readable, master)

    def _unplug(self) -> None:
        if self._fds is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._fds[0])
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = None

    def _readable(self, master: int) -> None:
        try:
            data = os.read(master, 4096)
        except OSError:  # every client closed the port: wait for the next one
            return
        self._buffer += data
        terminator = self.server.read_termination
        while terminator in self._buffer:
            line, self._buffer = self._buffer.split(terminator, 1)
            message = line.decode("ascii", "replace").strip()
            if message:
                assert self._loop is not None
                self._loop.create_task(self._answer(master, self._connection, message))

    async def _answer(self, master: int, connection: int, message: str) -> None:
        response = await self.server.execute(connection, message)
        if response is not None and self._fds is not None and self._fds[0] == master:
            with contextlib.suppress(OSError):
                os.write(master, response)

    def stop(self) -> None:
        if self._loop is None:
            return
        self.pull()
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = self._thread = None
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SerialLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `powermeter` on the `qkdtel sims` subcommands."""
    p = subparsers.add_parser(
        "powermeter",
        help="a simulated bench power meter on a pty, until interrupted",
        description="Serve a simulated Keysight 8163B-style power meter on a pseudo-terminal "
        "reached through PATH (a symlink); it reads a link's loss (default: link 8).",
    )
    p.add_argument("--path", type=Path, required=True, help="symlink to create for the tty")
    p.add_argument("-t", "--topology", help="topology YAML (default: the MadQCI twin)")
    p.add_argument("--link", default="8", help="link whose loss the meter reads")
    p.set_defaults(func=cmd_powermeter)


def cmd_powermeter(args: argparse.Namespace) -> int:
    try:
        link = next((x for x in load_topology(args.topology).links if x.id == args.link), None)
    except TopologyError as exc:
        print(f"sims powermeter: {exc}")
        return 2
    if link is None:
        print(f"sims powermeter: no link {args.link}")
        return 2
    stop = stop_on_signal()
    with SerialLine(PowerMeterSim.for_link(link), args.path) as line:
        print(f"power meter reading link {link.id} ({link.loss_db} dB) at {line.resource}")
        stop.wait()
    return 0

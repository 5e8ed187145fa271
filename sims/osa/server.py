"""Simulated optical spectrum analysers: a Yokogawa AQ6370-class and an Anritsu MS9740A-class.

Each is a `ScpiServer` with the command set of its class of instrument, written from the public
programming manuals' syntax (the driver's profiles are written separately, so a test of one
against the other checks both):

- Yokogawa AQ6370 (SCPI tree): `[:SENSe]:WAVelength:CENTer|SPAN|STARt|STOP` (values with a
  unit, NM/UM/M, metres without; queries answer metres), `[:SENSe]:BANDwidth|BWIDth
  [:RESolution]`, `[:SENSe]:SENSe NHLD|NAUT|NORMal|MID|HIGH1|HIGH2|HIGH3` (query: 0..6),
  `[:SENSe]:SWEep:POINts[:AUTO]`, `[:SENSe]:CORRection:RVELocity:MEDium AIR|VACuum`,
  `:INITiate:SMODe SINGle|REPeat|AUTO|SEGMent` (query: 1..4), `:INITiate[:IMMediate]`,
  `:ABORt`, `:STATus:OPERation:EVENt?` (bit 0: a sweep completed; read clears),
  `:FORMat[:DATA] ASCii|REAL[,64|,32]` (binary little-endian), `:TRACe:X?|Y?|SNUMber? TRA`.
- Anritsu MS9740A (native mnemonics, answers end in CR LF): `CNT`, `SPN`, `STA`, `STO` (nm),
  `RES` (0.03..1.0 nm), `MPT` (51..50001 points), `VBW` (1MHz..10Hz, the sensitivity), `WDP
  VACUUM|AIR`, `SSI` (single sweep), `SRT` (repeat), `SST` (stop), `DCA?` (start,stop,points),
  `DMA?` (levels in dBm, one per line), plus the IEEE 488.2 common commands and `SYST:ERR?`.

Both start up as real ones do: wavelengths in air (shifted ~0.4 nm from the vacuum ITU grid),
so a driver that forgets to select vacuum finds every channel off grid. A sweep takes
`sweep_time_s` of real time; `*OPC?` answers when it ends, in single mode only (repeat mode
never ends). The spectrum is the link's, from `spectrum.py`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qkdtel.sims.osa.spectrum import LinkSpectrum, link_spectrum
from qkdtel.sims.scpi.server import Block, Faults, ScpiFailure, ScpiServer
from qkdtel.sims.topology import Topology, load_topology

Dialect = Literal["yokogawa", "anritsu"]
DIALECTS: tuple[Dialect, ...] = ("yokogawa", "anritsu")

N_AIR = 1.000273
"""Refractive index of standard air near 1550 nm: wavelength in air = vacuum / N_AIR."""

YOKOGAWA_SENSE = {"NHLD": 0, "NAUT": 1, "MID": 2, "HIGH1": 3, "HIGH2": 4, "HIGH3": 5, "NORM": 6}
YOKOGAWA_FLOOR_DBM = {0: -65.0, 1: -65.0, 2: -75.0, 3: -85.0, 4: -88.0, 5: -90.0, 6: -65.0}
YOKOGAWA_RESOLUTIONS_NM = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
YOKOGAWA_SWEEP_MODES = {"SING": 1, "REP": 2, "AUTO": 3, "SEGM": 4}
ANRITSU_VBW_FLOOR_DBM = {
    "1MHZ": -55.0,
    "100KHZ": -60.0,
    "10KHZ": -65.0,
    "2KHZ": -70.0,
    "1KHZ": -72.0,
    "200HZ": -78.0,
    "100HZ": -82.0,
    "10HZ": -90.0,
}
ANRITSU_RESOLUTIONS_NM = (0.03, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0)
ANRITSU_POINTS = (51, 101, 251, 501, 1001, 2001, 5001, 10001, 20001, 50001)

_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)$")
_UNIT_NM = {"": 1e9, "M": 1e9, "MM": 1e6, "UM": 1e3, "NM": 1.0, "PM": 1e-3}


@dataclass
class OsaFaults(Faults):
    """The base fault knobs plus extra fibre loss on the monitored link."""

    added_loss_db: float = 0.0


@dataclass(frozen=True)
class Sweep:
    """What the last completed sweep measured (trace A)."""

    wavelength_nm: np.ndarray  # as the instrument reports them (air or vacuum)
    power_dbm: np.ndarray


def _failure_out_of_range() -> ScpiFailure:
    return ScpiFailure(-222, "Data out of range")


def _one_arg(args: list[str]) -> str:
    if not args or not args[0]:
        raise ScpiFailure(-109, "Missing parameter")
    return args[0]


def _number(args: list[str], default_scale: float = 1.0, units: dict | None = None) -> float:
    """A numeric argument; with `units`, a unit suffix scales it (none: `default_scale`)."""
    match = _NUMBER.match(_one_arg(args).strip())
    if not match:
        raise ScpiFailure(-120, "Numeric data error")
    value, unit = float(match.group(1)), match.group(2).upper()
    if units is None:
        if unit:
            raise ScpiFailure(-131, "Invalid suffix")
        return value * default_scale
    if unit not in units:
        raise ScpiFailure(-131, "Invalid suffix")
    return value * units[unit]


def _discrete(value: float, allowed: tuple[float, ...]) -> float:
    match = next((a for a in allowed if abs(a - value) < 1e-6 * max(1.0, a)), None)
    if match is None:
        raise _failure_out_of_range()
    return match


class OsaSimulator(ScpiServer):
    """One simulated OSA watching one link of the simulated network."""

    def __init__(
        self,
        dialect: Dialect = "yokogawa",
        link: str = "4",
        *,
        topology: Topology | None = None,
        seed: int = 0,
        sweep_time_s: float = 0.05,
        faults: OsaFaults | None = None,
        live: Callable[[LinkSpectrum], LinkSpectrum] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        """`live`, if given, makes each sweep show `live(spectrum)`: the link as a model outside
        the instrument has it at that moment (the twin's fibre faults); `faults` act on top."""
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
        super().__init__(
            host=host,
            port=port,
            write_termination=b"\r\n" if dialect == "anritsu" else b"\n",
            faults=faults or OsaFaults(),
        )
        self.faults: OsaFaults
        self.dialect = dialect
        self.link = link
        self.spectrum = link_spectrum(topology or load_topology(), link)
        self.live = live
        self.sweep_time_s = sweep_time_s
        self._rng = np.random.default_rng(seed)
        self.last_sweep: Sweep | None = None
        self._sweep_task: asyncio.Task | None = None
        self._sweep_done: asyncio.Event | None = None
        self.reset()
        if dialect == "yokogawa":
            self.identity = "YOKOGAWA,AQ6370D,SIM00001,02.08"
            self._add_yokogawa()
        else:
            self.identity = "ANRITSU,MS9740A,SIM00002,2.00.00"
            self._add_anritsu()

    # -- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Power-on settings (as the instruments ship: air wavelengths, auto sampling)."""
        self.start_nm, self.stop_nm = 1520.0, 1580.0
        self.points = 1001
        self.rbw_nm = 0.1
        self.vacuum = False
        self.format = "ASCII"
        self.yokogawa_sense = YOKOGAWA_SENSE["NAUT"]
        self.anritsu_vbw = "1KHZ"
        self.sweep_mode = YOKOGAWA_SWEEP_MODES["REP"] if self.dialect == "yokogawa" else 1
        self.operation_event = 0

    def clear_status(self) -> None:
        super().clear_status()
        self.operation_event = 0

    @property
    def sweeping(self) -> bool:
        return self._sweep_task is not None and not self._sweep_task.done()

    def pending(self) -> Awaitable[bool] | None:
        """The running sweep: a single sweep ends by itself, a repeat sweep only by abort."""
        if not self.sweeping:
            return None
        assert self._sweep_done is not None
        return self._sweep_done.wait()

    def floor_dbm(self) -> float:
        if self.dialect == "yokogawa":
            return YOKOGAWA_FLOOR_DBM[self.yokogawa_sense]
        return ANRITSU_VBW_FLOOR_DBM[self.anritsu_vbw]

    def _start_sweep(self, repeat: bool) -> None:
        if self.sweeping:
            return
        self._sweep_done = asyncio.Event()
        self._sweep_task = asyncio.ensure_future(self._run_sweeps(repeat, self._sweep_done))

    async def _run_sweeps(self, repeat: bool, done: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.sweep_time_s)
            self.last_sweep = self._measure()
            self.operation_event |= 1
            if not repeat:
                done.set()
                return

    def _abort(self) -> None:
        if self._sweep_task is not None:
            self._sweep_task.cancel()
            self._sweep_task = None
        if self._sweep_done is not None:
            self._sweep_done.set()

    def _measure(self) -> Sweep:
        spectrum = self.live(self.spectrum) if self.live else self.spectrum
        spectrum = spectrum.with_extra_loss(self.faults.added_loss_db)
        vacuum = np.linspace(self.start_nm, self.stop_nm, self.points)
        if not self.vacuum:
            # The instrument's axis is in air; the light is where it is (on the vacuum grid).
            vacuum = vacuum * N_AIR
        power = spectrum.trace_dbm(vacuum, self.rbw_nm, self.floor_dbm(), self._rng)
        return Sweep(vacuum if self.vacuum else vacuum / N_AIR, power)

    def _span(self, center: float | None = None, span: float | None = None) -> None:
        center = (self.start_nm + self.stop_nm) / 2 if center is None else center
        span = self.stop_nm - self.start_nm if span is None else span
        self._set_range(center - span / 2, center + span / 2)

    def _set_range(self, start: float, stop: float, low: float = 600.0, high: float = 1750.0):
        if not low <= start <= stop <= high:
            raise _failure_out_of_range()
        self.start_nm, self.stop_nm = start, stop

    def _trace(self) -> Sweep:
        if self.last_sweep is None:
            raise ScpiFailure(-230, "Data corrupt or stale")  # no sweep since power-on
        return self.last_sweep

    # -- Yokogawa AQ6370 -----------------------------------------------------------------------

    def _add_yokogawa(self) -> None:
        def metres(value_nm: float) -> str:
            return f"{value_nm * 1e-9:+.8E}"

        def wavelength(args: list[str]) -> float:
            return _number(args, units=_UNIT_NM)

        wav = "[:SENSe]:WAVelength"
        self.add(
            f"{wav}:CENTer",
            write=lambda a: self._span(center=wavelength(a)),
            query=lambda a: metres((self.start_nm + self.stop_nm) / 2),
        )
        self.add(
            f"{wav}:SPAN",
            write=lambda a: self._span(span=wavelength(a)),
            query=lambda a: metres(self.stop_nm - self.start_nm),
        )
        self.add(
            f"{wav}:STARt",
            write=lambda a: self._set_range(wavelength(a), max(wavelength(a), self.stop_nm)),
            query=lambda a: metres(self.start_nm),
        )
        self.add(
            f"{wav}:STOP",
            write=lambda a: self._set_range(min(wavelength(a), self.start_nm), wavelength(a)),
            query=lambda a: metres(self.stop_nm),
        )

        def resolution(args: list[str]) -> None:
            self.rbw_nm = _discrete(wavelength(args), YOKOGAWA_RESOLUTIONS_NM)

        for node in ("BANDwidth", "BWIDth"):
            self.add(
                f"[:SENSe]:{node}[:RESolution]",
                write=resolution,
                query=lambda a: metres(self.rbw_nm),
            )

        def sense(args: list[str]) -> None:
            token = _one_arg(args).upper()
            token = {"NORMAL": "NORM"}.get(token, token)
            if token.isdigit() and int(token) in YOKOGAWA_SENSE.values():
                self.yokogawa_sense = int(token)
            elif token in YOKOGAWA_SENSE:
                self.yokogawa_sense = YOKOGAWA_SENSE[token]
            else:
                raise ScpiFailure(-224, "Illegal parameter value")

        self.add("[:SENSe]:SENSe", write=sense, query=lambda a: str(self.yokogawa_sense))

        def points(args: list[str]) -> None:
            value = _number(args)
            if value != int(value) or not 101 <= value <= 50001:
                raise _failure_out_of_range()
            self.points = int(value)

        self.add("[:SENSe]:SWEep:POINts", write=points, query=lambda a: str(self.points))
        self.add("[:SENSe]:SWEep:POINts:AUTO", write=lambda a: None, query=lambda a: "0")

        def medium(args: list[str]) -> None:
            token = _one_arg(args).upper()
            if token not in ("AIR", "VAC", "VACUUM", "0", "1"):
                raise ScpiFailure(-224, "Illegal parameter value")
            self.vacuum = token in ("VAC", "VACUUM", "1")

        self.add(
            "[:SENSe]:CORRection:RVELocity:MEDium",
            write=medium,
            query=lambda a: "1" if self.vacuum else "0",
        )

        def sweep_mode(args: list[str]) -> None:
            token = _one_arg(args).upper()
            for name, code in YOKOGAWA_SWEEP_MODES.items():
                if token.startswith(name) or token == str(code):
                    self.sweep_mode = code
                    return
            raise ScpiFailure(-224, "Illegal parameter value")

        self.add(":INITiate:SMODe", write=sweep_mode, query=lambda a: str(self.sweep_mode))
        self.add(":INITiate[:IMMediate]", write=lambda a: self._start_sweep(self.sweep_mode != 1))
        self.add(":ABORt", write=lambda a: self._abort())

        def operation_event(args: list[str]) -> str:
            value, self.operation_event = self.operation_event, 0
            return str(value)

        self.add(":STATus:OPERation[:EVENt]", query=operation_event)

        def data_format(args: list[str]) -> None:
            token = ",".join(a.upper() for a in args)
            if token.startswith("ASC"):
                self.format = "ASCII"
            elif token in ("REAL", "REAL,64"):
                self.format = "REAL,64"
            elif token == "REAL,32":
                self.format = "REAL,32"
            else:
                raise ScpiFailure(-224, "Illegal parameter value")

        self.add(":FORMat[:DATA]", write=data_format, query=lambda a: self.format)

        def trace_values(args: list[str], axis: str) -> str | Block:
            if _one_arg(args).upper() != "TRA":
                raise ScpiFailure(-224, "Illegal parameter value")  # only trace A is swept
            sweep = self._trace()
            values = sweep.wavelength_nm * 1e-9 if axis == "x" else sweep.power_dbm
            if self.format == "ASCII":
                text = ",".join(f"{v:+.8E}" if axis == "x" else f"{v:+.3f}" for v in values)
                return text
            dtype = "<f8" if self.format == "REAL,64" else "<f4"
            return self.block(values.astype(dtype).tobytes(), itemsize=np.dtype(dtype).itemsize)

        self.add(":TRACe[:DATA]:X", query=lambda a: trace_values(a, "x"))
        self.add(":TRACe[:DATA]:Y", query=lambda a: trace_values(a, "y"))

        def samples(args: list[str]) -> str:
            if _one_arg(args).upper() != "TRA":
                raise ScpiFailure(-224, "Illegal parameter value")
            return str(len(self._trace().power_dbm))

        self.add(":TRACe[:DATA]:SNUMber", query=samples)

    # -- Anritsu MS9740A -----------------------------------------------------------------------

    def _add_anritsu(self) -> None:
        def nm(args: list[str]) -> float:
            return _number(args)

        self.add(
            "CNT",
            write=lambda a: self._span(center=nm(a)),
            query=lambda a: f"{(self.start_nm + self.stop_nm) / 2:.2f}",
        )
        self.add(
            "SPN",
            write=lambda a: self._span(span=nm(a)),
            query=lambda a: f"{self.stop_nm - self.start_nm:.1f}",
        )
        self.add(
            "STA",
            write=lambda a: self._set_range(nm(a), max(nm(a), self.stop_nm)),
            query=lambda a: f"{self.start_nm:.2f}",
        )
        self.add(
            "STO",
            write=lambda a: self._set_range(min(nm(a), self.start_nm), nm(a)),
            query=lambda a: f"{self.stop_nm:.2f}",
        )

        def resolution(args: list[str]) -> None:
            self.rbw_nm = _discrete(nm(args), ANRITSU_RESOLUTIONS_NM)

        self.add("RES", write=resolution, query=lambda a: f"{self.rbw_nm:.2f}")

        def points(args: list[str]) -> None:
            self.points = int(_discrete(nm(args), ANRITSU_POINTS))

        self.add("MPT", write=points, query=lambda a: str(self.points))

        def vbw(args: list[str]) -> None:
            token = _one_arg(args).upper()
            if token not in ANRITSU_VBW_FLOOR_DBM:
                raise ScpiFailure(-224, "Illegal parameter value")
            self.anritsu_vbw = token

        self.add("VBW", write=vbw, query=lambda a: self.anritsu_vbw.replace("HZ", "Hz"))

        def medium(args: list[str]) -> None:
            token = _one_arg(args).upper()
            if token not in ("VACUUM", "AIR"):
                raise ScpiFailure(-224, "Illegal parameter value")
            self.vacuum = token == "VACUUM"

        self.add("WDP", write=medium, query=lambda a: "VACUUM" if self.vacuum else "AIR")

        def single(args: list[str]) -> None:
            self.sweep_mode = 1
            self._start_sweep(repeat=False)

        def repeat(args: list[str]) -> None:
            self.sweep_mode = 2
            self._start_sweep(repeat=True)

        self.add("SSI", write=single)
        self.add("SRT", write=repeat)
        self.add("SST", write=lambda a: self._abort())

        def condition(args: list[str]) -> str:
            sweep = self._trace()
            wl = sweep.wavelength_nm
            return f"{wl[0]:.2f},{wl[-1]:.2f},{len(wl)}"

        self.add("DCA", query=condition)
        self.add(
            "DMA",
            query=lambda a: "\r\n".join(f"{v:.2f}" for v in self._trace().power_dbm),
        )

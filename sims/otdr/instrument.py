"""`OtdrSim`: a simulated OTDR on the shared SCPI simulator base, testing one topology link.

The command set is the qkdtel OTDR dialect (`qkdtel.drivers.otdr.commands`), modelled on the
SCPI of bench and rack OTDRs (EXFO FTB/IQS, HP/Agilent E60xx: SENSe settings in SI units with
unit suffixes, INITiate/ABORt, an operation status register whose bit 4 says "measuring", the
trace as a REAL,32 block, an event table read one event at a time).

An acquisition takes its averaging time divided by `speed` (the simulator may be accelerated);
`*OPC?` answers when it is over, `:SENSe:AVERage:PROGress?` says how far it is. At its end the
trace is synthesised from the fibre route (`fibre.synthesize`) and analysed by the same event
detection an instrument's firmware would run (`qkdtel.drivers.otdr.analysis`), so the event
table is measured, not copied from the model: tests compare it with the model's ground truth.

Fault knobs beyond the base's (`faults.stall`, `faults.errors`, `faults.truncate_blocks`):
`add_loss` / `add_reflection` / `cut` change the fibre; `hang_acquisition` makes acquisitions stop
progressing (at 40 %) until `:ABORt`, like a laser or detector fault.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

import numpy as np

from qkdtel.drivers.otdr.analysis import analyse
from qkdtel.drivers.otdr.trace import WAVELENGTHS_NM, EventType, OtdrTrace
from qkdtel.sims.otdr.fibre import Acquisition, FibreRoute, synthesize
from qkdtel.sims.scpi import Block, ScpiFailure, ScpiServer

PULSE_WIDTHS_NS = (5, 10, 30, 100, 300, 1000, 3000, 10000, 20000)
RANGE_M = (100.0, 200_000.0)
AVERAGING_S = (1.0, 3600.0)
MEASURING = 16  # bit 4 of the SCPI operation status register
HANG_AT = 0.4
SCPI_NAN = "9.91E+37"
EVENT_CODES = {EventType.NON_REFLECTIVE: 1, EventType.REFLECTIVE: 3, EventType.END: 4}
"""Event type codes of the event table (EXFO's: 1 splice, 2 gainer, 3 reflection, 4 end)."""

_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1.0,
    "M": 1.0,
    "KM": 1e3,
    "NM": 1e-9,
    "UM": 1e-6,
    "S": 1.0,
    "MS": 1e-3,
    "US": 1e-6,
    "NS": 1e-9,
}


def _number(args: list[str], unit: float = 1.0) -> float:
    """The one numeric argument in SI units (`1550NM` -> 1.55e-6); SCPI errors otherwise.

    `unit` scales a bare number (a wavelength without suffix is taken in nm by many OTDRs).
    """
    if not args:
        raise ScpiFailure(-109, "Missing parameter")
    match = _NUMBER.match(args[0])
    if not match or match.group(2).upper() not in _UNITS:
        raise ScpiFailure(-104, "Data type error")
    suffix = match.group(2).upper()
    return float(match.group(1)) * (_UNITS[suffix] if suffix else unit)


def _format(value: float | None) -> str:
    return SCPI_NAN if value is None else f"{value:.6E}"


class OtdrSim(ScpiServer):
    """One OTDR port connected to `route` (see the module docstring)."""

    def __init__(
        self,
        route: FibreRoute,
        *,
        speed: float = 1.0,
        seed: int = 0,
        live: Callable[[FibreRoute], FibreRoute] | None = None,
        **kwargs,
    ):
        """`live`, if given, makes each acquisition test `live(route)`: the fibre as a model
        outside the instrument has it when the acquisition ends (the twin's faults added)."""
        super().__init__(**kwargs)
        self.identity = f"QKDTEL,SIM-OTDR,LINK-{route.link},1.0"
        self.route = route
        self.live = live
        self.speed = speed
        self.hang_acquisition = False
        self._rng = np.random.default_rng(seed)
        self._task: asyncio.Task | None = None
        self._started = 0.0
        self._duration = 0.0
        self._result: OtdrTrace | None = None
        self._wait: asyncio.Future | None = None
        self.reset()
        self.add("[:SENSe]:WAVelength", write=self._set_wavelength, query=self._get_wavelength)
        self.add("[:SENSe]:PULSe:WIDTh", write=self._set_pulse, query=self._get_pulse)
        self.add("[:SENSe]:RANGe", write=self._set_range, query=lambda a: _format(self.range_m))
        self.add("[:SENSe]:AVERage:TIME", write=self._set_averaging, query=self._get_averaging)
        self.add("[:SENSe]:AVERage:PROGress", query=lambda a: f"{self.progress() * 100:.1f}")
        self.add(":INITiate[:IMMediate]", write=self._initiate)
        self.add(":ABORt", write=lambda a: self._abort())
        self.add(":STATus:OPERation:CONDition", query=self._condition)
        self.add(":FORMat[:DATA]", write=self._set_format, query=lambda a: self.data_format)
        self.add(":FORMat:BORDer", write=self._set_order, query=lambda a: self.byte_order)
        self.add(":TRACe:POINts", query=lambda a: str(self._trace().points))
        self.add(":TRACe:SPACing", query=lambda a: _format(self._trace().spacing_m))
        self.add(":TRACe:OFFSet", query=lambda a: _format(self._trace().offset_m))
        self.add(":TRACe[:DATA]", query=self._trace_data)
        self.add(":CALCulate:EVENt:COUNt", query=lambda a: str(len(self._trace().events)))
        self.add(":CALCulate:EVENt", query=self._event)
        self.add(":CALCulate:FLENgth", query=lambda a: _format(self._trace().fibre_length_m))
        self.add(":CALCulate:TLOSs", query=lambda a: _format(self._trace().total_loss_db))

    # -- fault knobs (call through ServerThread.call while serving) ---------------------------

    def add_loss(self, distance_m: float, loss_db: float) -> None:
        """A new non-reflective loss (bend, crushed cable) on the fibre from now on."""
        self.route = self.route.with_added_loss(distance_m, loss_db)

    def add_reflection(self, distance_m: float, reflectance_db: float, loss_db: float) -> None:
        """A new reflective event (a connector, a crack) on the fibre from now on."""
        self.route = self.route.with_reflection(distance_m, reflectance_db, loss_db)

    def cut(self, distance_m: float) -> None:
        """The fibre is broken at a distance from now on."""
        self.route = self.route.with_break(distance_m)

    # -- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        self._abort()
        self.wavelength_nm = 1550
        self.pulse_width_ns = 1000.0
        self.range_m = 40_000.0
        self.averaging_s = 30.0
        self.data_format = "ASC"
        self.byte_order = "NORM"
        self._result = None

    def measuring(self) -> bool:
        return self._task is not None and not self._task.done()

    def progress(self) -> float:
        """Fraction of the running acquisition done (1.0 when idle after one)."""
        if not self.measuring():
            return 1.0 if self._result is not None else 0.0
        done = (time.monotonic() - self._started) / self._duration
        return min(done, HANG_AT if self.hang_acquisition else 0.999)

    def pending(self) -> Awaitable[object] | None:
        if not self.measuring():
            return None
        assert self._task is not None
        # ends with the acquisition, also when ABORt cancels it (the query then answers 1)
        return asyncio.wait({self._task})

    # -- handlers ------------------------------------------------------------------------------

    def _idle(self) -> None:
        if self.measuring():
            raise ScpiFailure(-221, "Settings conflict;acquisition running")

    def _set_wavelength(self, args: list[str]) -> None:
        self._idle()
        value = round(_number(args, unit=1e-9) * 1e9)
        if value not in WAVELENGTHS_NM:
            raise ScpiFailure(-222, "Data out of range;wavelength")
        self.wavelength_nm = value

    def _get_wavelength(self, args: list[str]) -> str:
        return _format(self.wavelength_nm * 1e-9)

    def _set_pulse(self, args: list[str]) -> None:
        self._idle()
        value = round(_number(args) * 1e9, 3)
        if value not in PULSE_WIDTHS_NS:
            raise ScpiFailure(-222, "Data out of range;pulse width")
        self.pulse_width_ns = value

    def _get_pulse(self, args: list[str]) -> str:
        return _format(self.pulse_width_ns * 1e-9)

    def _set_range(self, args: list[str]) -> None:
        self._idle()
        value = _number(args)
        if not RANGE_M[0] <= value <= RANGE_M[1]:
            raise ScpiFailure(-222, "Data out of range;range")
        self.range_m = value

    def _set_averaging(self, args: list[str]) -> None:
        self._idle()
        value = _number(args)
        if not AVERAGING_S[0] <= value <= AVERAGING_S[1]:
            raise ScpiFailure(-222, "Data out of range;averaging time")
        self.averaging_s = value

    def _get_averaging(self, args: list[str]) -> str:
        return _format(self.averaging_s)

    def _set_format(self, args: list[str]) -> None:
        token = ",".join(a.upper() for a in args)
        if token in ("ASC", "ASCII"):
            self.data_format = "ASC"
        elif token in ("REAL,32", "REAL"):
            self.data_format = "REAL,32"
        else:
            raise ScpiFailure(-224, "Illegal parameter value;format")

    def _set_order(self, args: list[str]) -> None:
        token = args[0].upper() if args else ""
        if token not in ("NORM", "NORMAL", "SWAP", "SWAPPED"):
            raise ScpiFailure(-224, "Illegal parameter value;byte order")
        self.byte_order = token[:4]

    def _condition(self, args: list[str]) -> str:
        return str(MEASURING if self.measuring() else 0)

    def _initiate(self, args: list[str]) -> None:
        if self.measuring():
            raise ScpiFailure(-213, "Init ignored;acquisition running")
        settings = Acquisition(
            self.wavelength_nm, self.pulse_width_ns, self.range_m, self.averaging_s
        )
        self._result = None
        self._started = time.monotonic()
        self._duration = max(self.averaging_s / self.speed, 1e-3)
        self._task = asyncio.ensure_future(self._acquire(settings))

    async def _acquire(self, settings: Acquisition) -> None:
        await asyncio.sleep(self._duration)
        while self.hang_acquisition:  # a stuck laser/detector: only ABORt ends it
            await asyncio.sleep(0.05)
        route = self.live(self.route) if self.live else self.route
        values = synthesize(route, settings, self._rng)
        trace = OtdrTrace(
            values,
            settings.spacing_m,
            settings.wavelength_nm,
            settings.pulse_width_ns,
            averaging_s=settings.averaging_s,
            range_m=settings.range_m,
        )
        self._result = analyse(trace)

    def _abort(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def _trace(self) -> OtdrTrace:
        self._idle()
        if self._result is None:
            raise ScpiFailure(-230, "Data corrupt or stale;no acquisition")
        return self._result

    def _trace_data(self, args: list[str]) -> str | Block:
        values = self._trace().values_db
        if self.data_format == "ASC":
            return ",".join(f"{v:.3f}" for v in values)
        order = "<" if self.byte_order == "SWAP" else ">"
        return self.block(values.astype(f"{order}f4").tobytes(), itemsize=4)

    def _event(self, args: list[str]) -> str:
        events = self._trace().events
        try:
            index = int(args[0])
        except (IndexError, ValueError):
            raise ScpiFailure(-109, "Missing parameter;event number") from None
        if not 1 <= index <= len(events):
            raise ScpiFailure(-222, "Data out of range;event number")
        event = events[index - 1]
        return ",".join(
            (
                _format(event.distance_m),
                str(EVENT_CODES[event.type]),
                _format(event.loss_db),
                _format(event.reflectance_db),
                _format(event.cumulative_loss_db),
            )
        )

"""The two OSA dialects, one table each: our command names -> the instrument's commands.

The driver (`osa.py`) speaks only the names on the left. Where a command comes from:

Yokogawa AQ6370 class (AQ6370C/D/E, AQ6373, AQ6375; Yokogawa "AQ6370 Series Remote Control"
manual, IM AQ6370-17EN, SCPI tree; the same commands PyMeasure's AQ6370 driver uses):
`:SENSe:WAVelength:CENTer|SPAN|STARt|STOP` (answers in metres), `:SENSe:BANDwidth:RESolution`,
`:SENSe:SENSe` (sensitivity NHLD..HIGH3), `:SENSe:SWEep:POINts[:AUTO]`, `:INITiate:SMODe`,
`:INITiate`, `:ABORt`, `:FORMat:DATA ASCii|REAL,64`, `:TRACe:X?|Y?|SNUMber? TRA`,
`:STATus:OPERation:EVENt?` (bit 0 set when a sweep has completed: the manual's way to wait for
a sweep). `:SENSe:CORRection:RVELocity:MEDium VACuum` selects vacuum wavelengths; it is from the
manual's SENSe:CORRection group as we read it -- check it on the first real instrument. Binary
traces are REAL,64 little-endian (the AQ6370's byte order, `BYTE_ORDER` below).

Anritsu MS9740A class (MS9740A/B; Anritsu "MS9740A Optical Spectrum Analyzer Remote Control
Operation Manual", native commands, as in PyMeasure's MS9710C/MS9740A drivers): `CNT`, `SPN`,
`STA`, `STO` (nm), `RES` (nm), `MPT` (sampling points), `VBW` (video bandwidth: the sensitivity
knob), `WDP VACUUM` (wavelength in vacuum), `SSI` (single sweep), `SST` (stop sweep), `DCA?`
(start, stop, points of trace A), `DMA?` (trace A levels in dBm, ASCII, one per line: this class
has no binary trace transfer here, so the ASCII fallback is used). Completion: `*OPC?`, which
the manual pairs with sweeps (`...;:INITiate;*WAI;:TRACe:DMA?`). The error queue is read with
`:SYSTem:ERRor?` as on every SCPI instrument; the manual documents the SCPI status model
alongside the native commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from qkdtel.drivers.scpi import (
    CommandTable,
    action,
    control,
    ieee488_table,
    in_range,
    integer,
    measurement,
    one_of,
    scaled,
    setting,
)

Dialect = Literal["yokogawa", "anritsu"]
Sensitivity = Literal["normal", "mid", "high1", "high2", "high3"]

BYTE_ORDER = "<"
"""Byte order of the Yokogawa REAL,64 trace blocks (little-endian)."""


@dataclass(frozen=True)
class OsaProfile:
    """One dialect: its command table plus the few facts the driver branches on.

    `completion`: how the end of a sweep is awaited -- `opc` (`*OPC?` blocks until the sweep
    ends) or `operation_event` (poll the `sweep_event` status query until bit 0).
    `x_axis`: `trace` (the instrument sends the wavelength of every point) or `condition`
    (it sends start, stop and points; the axis is evenly spaced).
    `binary`: numpy dtype of binary traces, None when the dialect has only ASCII.
    """

    dialect: Dialect
    model: str
    commands: CommandTable
    resolutions_nm: tuple[float, ...]
    points: tuple[int, ...] | range
    sensitivities: Mapping[str, str]
    completion: Literal["opc", "operation_event"]
    x_axis: Literal["trace", "condition"]
    binary: str | None
    read_termination: str
    write_termination: str

    def check_resolution(self, value: float) -> float:
        """`value` if this class of instrument offers it, else ValueError listing the choices."""
        if not any(abs(value - r) < 1e-9 for r in self.resolutions_nm):
            choices = ", ".join(f"{r:g}" for r in self.resolutions_nm)
            raise ValueError(f"{self.model} resolutions are {choices} nm, not {value:g}")
        return value

    def check_points(self, value: int) -> int:
        if value not in self.points:
            if isinstance(self.points, range):
                wanted = f"{self.points.start}..{self.points.stop - 1}"
            else:
                wanted = ", ".join(map(str, self.points))
            raise ValueError(f"{self.model} takes {wanted} points, not {value}")
        return value

    def check_sensitivity(self, value: str) -> str:
        if value not in self.sensitivities:
            raise ValueError(
                f"{self.model} sensitivities are {', '.join(self.sensitivities)}, not {value!r}"
            )
        return value


YOKOGAWA_SENSITIVITY = {
    "normal": "NORMal",
    "mid": "MID",
    "high1": "HIGH1",
    "high2": "HIGH2",
    "high3": "HIGH3",
}

YOKOGAWA = OsaProfile(
    dialect="yokogawa",
    model="Yokogawa AQ6370",
    commands=ieee488_table(
        "Yokogawa AQ6370",
        vacuum=setting(":SENSe:CORRection:RVELocity:MEDium VACuum"),
        center_nm=control(
            ":SENSe:WAVelength:CENTer?",
            ":SENSe:WAVelength:CENTer {value:.4f}NM",
            parse=scaled(1e9),
            validate=in_range(600, 1700, "nm"),
        ),
        span_nm=control(
            ":SENSe:WAVelength:SPAN?",
            ":SENSe:WAVelength:SPAN {value:.4f}NM",
            parse=scaled(1e9),
            validate=in_range(0, 1100, "nm"),
        ),
        start_nm=control(
            ":SENSe:WAVelength:STARt?",
            ":SENSe:WAVelength:STARt {value:.4f}NM",
            parse=scaled(1e9),
            validate=in_range(600, 1700, "nm"),
        ),
        stop_nm=control(
            ":SENSe:WAVelength:STOP?",
            ":SENSe:WAVelength:STOP {value:.4f}NM",
            parse=scaled(1e9),
            validate=in_range(600, 1700, "nm"),
        ),
        resolution_nm=control(
            ":SENSe:BANDwidth:RESolution?",
            ":SENSe:BANDwidth:RESolution {value:.3f}NM",
            parse=scaled(1e9),
        ),
        sensitivity=setting(":SENSe:SENSe {value}", validate=one_of(YOKOGAWA_SENSITIVITY)),
        points_auto_off=setting(":SENSe:SWEep:POINts:AUTO OFF"),
        points=control(":SENSe:SWEep:POINts?", ":SENSe:SWEep:POINts {value:d}", parse=integer),
        single_mode=setting(":INITiate:SMODe SINGle"),
        sweep=action(":INITiate", slow=True, doc="one sweep (single mode)"),
        sweep_event=measurement(
            ":STATus:OPERation:EVENt?", parse=integer, doc="bit 0: a sweep completed"
        ),
        abort=action(":ABORt", check=False),
        format_binary=setting(":FORMat:DATA REAL,64"),
        format_ascii=setting(":FORMat:DATA ASCii"),
        trace_points=measurement(":TRACe:SNUMber? TRA", parse=integer),
        trace_x=measurement(":TRACe:X? TRA", doc="wavelengths in metres"),
        trace_y=measurement(":TRACe:Y? TRA", doc="levels in dBm"),
    ),
    resolutions_nm=(0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
    points=range(101, 50002),
    sensitivities=YOKOGAWA_SENSITIVITY,
    completion="operation_event",
    x_axis="trace",
    binary=f"{BYTE_ORDER}f8",
    read_termination="\n",
    write_termination="\n",
)

ANRITSU_VBW = {"normal": "1kHz", "mid": "200Hz", "high1": "100Hz", "high2": "10Hz"}


def _condition(text: str) -> tuple[float, float, int]:
    """`DCA?` -> (start nm, stop nm, points)."""
    start, stop, points = text.split(",")
    return float(start), float(stop), integer(points)


ANRITSU = OsaProfile(
    dialect="anritsu",
    model="Anritsu MS9740A",
    commands=ieee488_table(
        "Anritsu MS9740A",
        vacuum=setting("WDP VACUUM"),
        center_nm=control("CNT?", "CNT {value:.3f}", validate=in_range(600, 1750, "nm")),
        span_nm=control("SPN?", "SPN {value:.3f}", validate=in_range(0, 1200, "nm")),
        start_nm=control("STA?", "STA {value:.3f}", validate=in_range(600, 1750, "nm")),
        stop_nm=control("STO?", "STO {value:.3f}", validate=in_range(600, 1750, "nm")),
        resolution_nm=control("RES?", "RES {value:.2f}"),
        sensitivity=setting("VBW {value}", validate=one_of(ANRITSU_VBW)),
        points=control("MPT?", "MPT {value:d}", parse=integer),
        sweep=action("SSI", slow=True, doc="one single sweep"),
        abort=action("SST", check=False),
        trace_condition=measurement("DCA?", parse=_condition, doc="start,stop,points"),
        trace_y=measurement("DMA?", doc="levels in dBm, one per line"),
    ),
    resolutions_nm=(0.03, 0.05, 0.07, 0.1, 0.2, 0.5, 1.0),
    points=(51, 101, 251, 501, 1001, 2001, 5001, 10001, 20001, 50001),
    sensitivities=ANRITSU_VBW,
    completion="opc",
    x_axis="condition",
    binary=None,
    read_termination="\r\n",
    write_termination="\n",
)

PROFILES: dict[str, OsaProfile] = {p.dialect: p for p in (YOKOGAWA, ANRITSU)}

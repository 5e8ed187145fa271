"""`qkdtel.lab`: the OSA and OTDR in a lab script -- context managers and typed results.

    from qkdtel.lab import OsaSession, OtdrSession

    with OsaSession.open("TCPIP::127.0.0.1::5025::SOCKET", dialect="yokogawa") as osa:
        sweep = osa.sweep(start_nm=1528, stop_nm=1568, rbw_nm=0.02, points=5001)
    report = sweep.itu_report(grid_ghz=100, quantum_channels=[37, 38])
    for channel in report.classical:
        print(channel.label, channel.peak_dbm, channel.osnr_db)
    for notch in report.notches:
        print(notch.label, notch.depth_db, notch.in_band_noise_dbm)

    with OtdrSession.open("TCPIP::127.0.0.1::5026::SOCKET") as otdr:
        trace = otdr.acquire(wavelength_nm=1550, averaging_s=30, on_progress=print)
    print(trace.fibre_length_m, trace.total_loss_db, trace.events)

Why a facade and not a second driver: the measuring is the drivers' own classes
(`qkdtel.drivers.osa.OsaControl`, `qkdtel.drivers.otdr.OtdrControl`), so a lab sweep is
exactly what the collector polls -- same commands, error-queue checks, recovery after a
timeout, same analysis.
What those classes leave to their caller is added here: building the `ScpiInstrument` from a
resource name (`open`, which also asks `*IDN?` so a wrong address fails at once, not at the
first sweep), releasing it (`close` / `with`), checking arguments with the rules the
configuration file uses (`OsaOptions`, `OtdrOptions`: a resolution the dialect lacks is
refused before anything is sent), a time budget per call, and results that carry their
settings (`Sweep`, `ItuReport`).

Errors: invalid arguments raise `ValueError` naming the argument; instrument trouble raises the
drivers' `PollError` subclasses (`Refused`, `DeviceTimeout`, `ScpiError`, `Malformed`), each
message naming the resource and the command.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ValidationError

from qkdtel.drivers import osa as osa_driver
from qkdtel.drivers.optics import on_grid
from qkdtel.drivers.osa import (
    Analysis,
    ChannelResult,
    NotchResult,
    SpectrumTrace,
    SweepSettings,
    analyse,
)
from qkdtel.drivers.osa.analysis import total_power_dbm
from qkdtel.drivers.osa.options import OsaOptions
from qkdtel.drivers.otdr import AcquisitionSettings, OtdrControl, Progress
from qkdtel.drivers.otdr.baseline import Alarm, BaselineStore, Thresholds, compare
from qkdtel.drivers.otdr.commands import OTDR_TABLE
from qkdtel.drivers.otdr.options import OtdrOptions
from qkdtel.drivers.otdr.trace import EventType, OtdrEvent, OtdrTrace
from qkdtel.drivers.powermeter.driver import PowerMeterDriver, PowerMeterOptions
from qkdtel.drivers.scpi import ScpiInstrument, VisaSettings, operation_budget
from qkdtel.sdk import PollError

__all__ = [
    "Alarm",
    "BaselineStore",
    "ChannelResult",
    "EventType",
    "ItuReport",
    "NotchResult",
    "OsaSession",
    "OtdrEvent",
    "OtdrSession",
    "OtdrTrace",
    "PollError",
    "PowerReading",
    "Progress",
    "SpectrumTrace",
    "Sweep",
    "Thresholds",
    "compare",
    "read_power",
]


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], document: dict[str, Any]) -> M:
    """`model` from `document`, or ValueError with every problem on one line, by key."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ValueError("; ".join(problems)) from exc


def _identify(instrument: ScpiInstrument, timeout: float) -> str:
    """`*IDN?`; closes the instrument if it fails, so a failed `open` leaks nothing."""
    try:
        with instrument.job(timeout) as job:
            return str(job.get("identify"))
    except BaseException:
        instrument.close()
        raise


class _Session:
    """What both instruments share: the SCPI instrument, its identity, `with`/`close`."""

    instrument: ScpiInstrument
    identity: str

    def close(self) -> None:
        """Release the connection (shared with other users of the resource until the last)."""
        self.instrument.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def resource(self) -> str:
        return self.instrument.where


# -- OSA --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItuReport(Analysis):
    """The ITU-grid analysis of a sweep (`Analysis`) and the grid it was made on."""

    grid_ghz: int
    quantum_bandwidth_ghz: float

    @property
    def classical(self) -> list[ChannelResult]:
        """Channels carrying classical light, in channel order."""
        return [c for c in self.channels if c.occupied]

    def channel(self, number: float) -> ChannelResult:
        """The result of one grid channel (KeyError if it is not in the report)."""
        for result in self.channels:
            if result.channel == number:
                return result
        raise KeyError(f"channel {number:g} is not in the report")


@dataclass(frozen=True)
class Sweep:
    """One sweep: the trace, the settings it was taken with, the analyser, how long it took."""

    trace: SpectrumTrace
    settings: SweepSettings
    identity: str
    duration_s: float
    taken_ns: int = 0
    """Wall-clock time (ns since the epoch) the sweep's trace was read."""

    @property
    def total_power_dbm(self) -> float:
        """All the light in the span, as a power meter behind the same tap would read it."""
        return total_power_dbm(self.trace)

    def itu_report(
        self,
        grid_ghz: int = 100,
        quantum_channels: Iterable[float] = (),
        *,
        channels: Sequence[float] | None = None,
        quantum_bandwidth_ghz: float = 40.0,
        occupied_margin_db: float = 10.0,
    ) -> ItuReport:
        """Per-channel power and OSNR, and the notch at each quantum channel (see the OSA
        driver's README for how each figure is obtained). ValueError for channels off the
        grid or outside the sweep."""
        quantum = list(quantum_channels)
        off_grid = [f"{c:g}" for c in [*quantum, *(channels or ())] if not on_grid(c, grid_ghz)]
        if off_grid:
            raise ValueError(f"channels {', '.join(off_grid)} are not on the {grid_ghz} GHz grid")
        analysis = analyse(
            self.trace,
            spacing_ghz=grid_ghz,
            channels=channels,
            quantum_channels=quantum,
            quantum_bandwidth_ghz=quantum_bandwidth_ghz,
            occupied_margin_db=occupied_margin_db,
        )
        return ItuReport(analysis.channels, analysis.notches, grid_ghz, quantum_bandwidth_ghz)

    def save(self, path: str | Path) -> Path:
        """Write the trace as `.npz` or `.csv` (by suffix), with the analyser in its metadata."""
        meta = {**self.trace.meta, "identity": self.identity}
        trace = SpectrumTrace(
            self.trace.wavelength_nm, self.trace.power_dbm, self.trace.resolution_nm, meta
        )
        return trace.save(path)


class OsaSession(_Session):
    """An optical spectrum analyser of either dialect (`yokogawa`: AQ6370 class, `anritsu`:
    MS9740A class); open it with `OsaSession.open`."""

    def __init__(self, document: dict[str, Any]):
        self._document = document
        options = _validated(OsaOptions, document)
        self.dialect = options.dialect
        self.instrument = ScpiInstrument(
            options.visa, options.profile.commands, recovery_timeout=options.recovery_timeout
        )
        self.osa = osa_driver.OsaControl(self.instrument, options.profile)
        self.identity = _identify(self.instrument, options.visa.timeout + options.visa.open_timeout)

    @classmethod
    def open(
        cls,
        resource: str,
        *,
        dialect: str,
        timeout: float = 5.0,
        sweep_timeout: float = 60.0,
    ) -> OsaSession:
        """Connect and identify the analyser. `timeout`: limit of one read or write;
        `sweep_timeout`: longest a sweep may take."""
        return cls(
            {
                "dialect": dialect,
                "visa": {"resource": resource, "timeout": timeout, "open_timeout": timeout},
                "sweep_timeout": sweep_timeout,
            }
        )

    def sweep(
        self,
        *,
        start_nm: float | None = None,
        stop_nm: float | None = None,
        center_nm: float | None = None,
        span_nm: float | None = None,
        rbw_nm: float = 0.05,
        points: int = 2001,
        sensitivity: str = "high1",
        transfer: str | None = None,
    ) -> Sweep:
        """Configure, sweep once and read the trace. The span is `start_nm`/`stop_nm` or
        `center_nm`/`span_nm` (vacuum wavelengths; default the C-band, 1528-1567 nm);
        `transfer` is `binary` or `ascii` (default: binary where the dialect has it)."""
        given = {
            "start_nm": start_nm,
            "stop_nm": stop_nm,
            "center_nm": center_nm,
            "span_nm": span_nm,
            "trace_transfer": transfer,
        }
        options = _validated(
            OsaOptions,
            {
                **self._document,
                **{k: v for k, v in given.items() if v is not None},
                "resolution_nm": rbw_nm,
                "points": points,
                "sensitivity": sensitivity,
            },
        )
        settings = options.sweep_settings()
        began = time.monotonic()
        trace = self.osa.capture(settings, budget=operation_budget(settings.sweep_timeout))
        return Sweep(trace, settings, self.identity, time.monotonic() - began, time.time_ns())


# -- OTDR -------------------------------------------------------------------------------------


class OtdrSession(_Session):
    """An OTDR of the qkdtel SCPI dialect (see `qkdtel.drivers.otdr.commands`); open it with
    `OtdrSession.open`. `name` labels its progress reports."""

    def __init__(self, visa: VisaSettings, name: str):
        self.name = name
        self.instrument = ScpiInstrument(visa, OTDR_TABLE)
        self.otdr = OtdrControl(self.instrument, name)
        self.identity = _identify(self.instrument, visa.timeout + visa.open_timeout)

    @classmethod
    def open(cls, resource: str, *, timeout: float = 5.0, name: str = "otdr") -> OtdrSession:
        """Connect and identify the OTDR. `timeout`: limit of one read or write."""
        visa = _validated(
            VisaSettings, {"resource": resource, "timeout": timeout, "open_timeout": timeout}
        )
        return cls(visa, name)

    def acquire(
        self,
        *,
        wavelength_nm: int = 1550,
        pulse_width_ns: float = 1000.0,
        range_m: float = 50_000.0,
        averaging_s: float = 30.0,
        binary: bool = True,
        progress_interval: float = 0.5,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> OtdrTrace:
        """One acquisition: the trace with the instrument's event table, fibre length and
        total loss. `on_progress` is called at every status poll (every `progress_interval`
        seconds) with the percentage done; `range_m` should be about twice the fibre."""
        options = _validated(
            OtdrOptions,
            {
                "visa": self.instrument.settings.model_dump(),
                "link": self.name,
                "wavelengths_nm": [wavelength_nm],
                "pulse_width_ns": pulse_width_ns,
                "range_m": range_m,
                "averaging": averaging_s,
                "progress_interval": progress_interval,
            },
        )
        settings = AcquisitionSettings(
            wavelength_nm=wavelength_nm,
            pulse_width_ns=options.pulse_width_ns,
            range_m=options.range_m,
            averaging_s=options.averaging,
            binary=binary,
            progress_interval=options.progress_interval,
        )
        budget = operation_budget(settings.averaging_s)
        return self.otdr.capture(settings, budget, on_progress)


# -- power meter ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerReading:
    """One head's reading: None when the port is dark (below the meter's floor)."""

    slot: int
    channel: int
    wavelength_nm: float
    power_dbm: float | None


def read_power(
    resource: str,
    heads: Sequence[dict[str, Any]] = ({},),
    *,
    timeout: float = 2.0,
    baud_rate: int | None = None,
) -> list[PowerReading]:
    """Read each head once (`heads`: `slot`, `channel`, `wavelength_nm`, `averaging` as in the
    driver's options), through the collector's own power meter driver, then release the port."""
    visa: dict[str, Any] = {"resource": resource, "timeout": timeout, "open_timeout": timeout}
    if baud_rate is not None:
        visa["baud_rate"] = baud_rate
    options = _validated(PowerMeterOptions, {"visa": visa, "heads": list(heads)})
    driver = PowerMeterDriver("powermeter", options, timeout=timeout * (2 + len(options.heads)))
    try:
        samples = driver.poll_blocking()
    finally:
        driver.close_blocking()
    return [
        PowerReading(
            int(s.tags["slot"]),
            int(s.tags["channel"]),
            float(s.tags["wavelength"]),
            s.fields.get("power_dbm"),  # type: ignore[arg-type]
        )
        for s in samples
    ]

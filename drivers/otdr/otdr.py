"""`OtdrControl`: one acquisition on an OTDR of the qkdtel dialect -- configure, acquire while
reporting progress, read the trace and the instrument's event table.

Kept apart from the driver (as `OsaControl` is for the OSA) so a lab script or the
`qkdtel otdr` command runs exactly the acquisition the collector runs, without the collector's
samples, baselines and alarms:

    otdr = OtdrControl(ScpiInstrument(VisaSettings(resource="TCPIP::10.0.0.7::5025::SOCKET"),
                                      OTDR_TABLE), "otdr-link8")
    trace = otdr.capture(AcquisitionSettings(1550, averaging_s=30), budget=60)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from qkdtel.drivers.otdr.commands import EVENT_TYPES, MEASURING, SCPI_NAN
from qkdtel.drivers.otdr.trace import OtdrEvent, OtdrTrace
from qkdtel.drivers.scpi import Job, ScpiInstrument
from qkdtel.sdk import DeviceTimeout, Malformed


@dataclass(frozen=True)
class Progress:
    """How far a running acquisition is, as reported to the `on_progress` callback."""

    device: str
    wavelength_nm: int
    percent: float
    elapsed_s: float


@dataclass(frozen=True)
class AcquisitionSettings:
    """One acquisition; see the driver's README for what each value does to the trace."""

    wavelength_nm: int = 1550
    pulse_width_ns: float = 1000.0
    range_m: float = 50_000.0
    averaging_s: float = 30.0
    binary: bool = True
    progress_interval: float = 0.5


def _number(text: str, where: str) -> float | None:
    """One field of an event row; None for SCPI's not-a-number."""
    try:
        value = float(text)
    except ValueError as exc:
        raise Malformed(f"{where}: {text.strip()[:30]!r} is not a number") from exc
    if not math.isfinite(value) or value >= SCPI_NAN * 0.99:
        return None
    return value


class OtdrControl:
    """An OTDR port; `name` labels its progress reports (the device name in the collector)."""

    def __init__(self, instrument: ScpiInstrument, name: str):
        self.instrument = instrument
        self.name = name

    def capture(
        self,
        settings: AcquisitionSettings,
        budget: float,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> OtdrTrace:
        """One acquisition as one job of at most `budget` seconds."""
        with self.instrument.job(budget) as job:
            return self.acquire(job, settings, on_progress)

    def acquire(
        self,
        job: Job,
        settings: AcquisitionSettings,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> OtdrTrace:
        """Configure, acquire, read trace and event table within an open job."""
        job.set("wavelength_nm", settings.wavelength_nm)
        job.set("pulse_width_ns", settings.pulse_width_ns)
        job.set("range_m", settings.range_m)
        job.set("averaging_s", settings.averaging_s)
        job.set("data_format", "REAL,32" if settings.binary else "ASCii")
        if settings.binary:
            job.set("byte_order", "SWAPped")
        job.run("start")
        self._wait(job, settings, on_progress)

        points = job.get("points")
        if points < 2:
            raise Malformed(f"{job.where}: the trace has {points} points")
        values = (
            job.query_block("trace", "<f4", expected=points)
            if settings.binary
            else job.query_values("trace", expected=points)
        )
        events = tuple(self._event(job, i) for i in range(1, job.get("event_count") + 1))
        length = job.get("fibre_length_m")
        loss = job.get("total_loss_db")
        return OtdrTrace(
            values,
            job.get("spacing_m"),
            settings.wavelength_nm,
            settings.pulse_width_ns,
            offset_m=job.get("offset_m"),
            averaging_s=settings.averaging_s,
            range_m=settings.range_m,
            events=events,
            fibre_length_m=None if length >= SCPI_NAN * 0.99 else length,
            total_loss_db=None if loss >= SCPI_NAN * 0.99 else loss,
        )

    def _wait(
        self,
        job: Job,
        settings: AcquisitionSettings,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        """Poll the status register until the acquisition is over, reporting progress; then
        `*OPC?` confirms it. DeviceTimeout (the layer then aborts it) when the budget ends."""
        started = time.monotonic()
        wavelength = settings.wavelength_nm
        interval = settings.progress_interval
        while True:
            measuring = job.get("condition") & MEASURING
            percent = 100.0 if not measuring else job.get("progress")
            if on_progress is not None:
                on_progress(Progress(self.name, wavelength, percent, time.monotonic() - started))
            if not measuring:
                break
            if job.remaining() < interval:
                raise DeviceTimeout(
                    f"{job.where}: acquisition at {wavelength} nm only {percent:.0f} % done "
                    f"after {time.monotonic() - started:.1f} s; aborted (the device timeout "
                    f"must exceed the averaging time, {settings.averaging_s:g} s, plus the "
                    "trace transfer)"
                )
            time.sleep(interval)
        job.wait_complete(job.remaining(), what=f"the acquisition at {wavelength} nm")

    @staticmethod
    def _event(job: Job, index: int) -> OtdrEvent:
        answer = job.get("event", index=index)
        where = f"{job.where}: event {index}"
        fields = answer.split(",")
        if len(fields) != 5:
            raise Malformed(f"{where}: expected 5 comma-separated fields, got {answer[:80]!r}")
        distance = _number(fields[0], where)
        code = _number(fields[1], where)
        if distance is None or code is None or int(code) not in EVENT_TYPES:
            raise Malformed(f"{where}: no distance or unknown type in {answer[:80]!r}")
        return OtdrEvent(
            distance,
            EVENT_TYPES[int(code)],
            _number(fields[2], where),
            _number(fields[3], where),
            _number(fields[4], where),
        )

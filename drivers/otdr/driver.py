"""OTDR driver: configure, acquire (tens of seconds to minutes), read the trace and event
table, compare with the link's commissioning baseline (see README.md).

Why it is built like this:
- it is a `BlockingDriver` (pyvisa is blocking), so an acquisition occupies a worker thread and
  never the event loop: other devices' polls go on meanwhile;
- all I/O is one job of the shared SCPI layer (`ScpiInstrument.job`): one job per instrument
  at a time in the whole process, and a time budget a little shorter than the device's
  timeout, so the driver gives up (DeviceTimeout) before the collector abandons the thread;
  the layer then aborts the acquisition and clears the instrument before anyone uses it again;
- the end of an acquisition is found by polling the operation status register (reporting
  progress as it goes) and confirmed with `*OPC?`, never by sleeping for the averaging time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from qkdtel.drivers.base import BlockingDriver
from qkdtel.drivers.otdr.baseline import Alarm, BaselineStore, Thresholds, compare
from qkdtel.drivers.otdr.commands import EVENT_TYPES, MEASURING, OTDR_TABLE, SCPI_NAN
from qkdtel.drivers.otdr.options import OtdrOptions
from qkdtel.drivers.otdr.trace import Event, EventType, Trace
from qkdtel.drivers.scpi import Job, ScpiInstrument
from qkdtel.errors import DeviceTimeout, Malformed, PollError
from qkdtel.sample import Sample, now_ns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """How far a running acquisition is, as reported to `OtdrDriver.on_progress`."""

    device: str
    wavelength_nm: int
    percent: float
    elapsed_s: float


def _number(text: str, where: str) -> float | None:
    """One field of an event row; None for SCPI's not-a-number."""
    try:
        value = float(text)
    except ValueError:
        raise Malformed(f"{where}: {text.strip()[:30]!r} is not a number") from None
    if not math.isfinite(value) or value >= SCPI_NAN * 0.99:
        return None
    return value


class OtdrDriver(BlockingDriver):
    """One OTDR port testing one link."""

    options_model: ClassVar[type[OtdrOptions]] = OtdrOptions
    description: ClassVar[str] = "OTDR over SCPI: trace, event table, baseline alarms"
    options: OtdrOptions

    def __init__(self, name: str, options: OtdrOptions, timeout: float):
        super().__init__(name, options, timeout)
        self.instrument = ScpiInstrument(options.visa, OTDR_TABLE)
        self.baselines = BaselineStore(options.baseline_dir) if options.baseline_dir else None
        self.thresholds = Thresholds(
            options.alarm_loss_db,
            options.alarm_total_loss_db,
            options.alarm_reflectance_db,
            options.alarm_length_m,
        )
        self.on_progress: Callable[[Progress], None] | None = None
        """Called from the worker thread at every status poll of an acquisition."""

    def budget(self) -> float:
        """The job's time budget: the device timeout less a margin to abort and report in."""
        return max(self.timeout - min(2.0, 0.1 * self.timeout), 0.1)

    def poll_blocking(self) -> list[Sample]:
        samples: list[Sample] = []
        with self.instrument.job(self.budget()) as job:
            for wavelength in self.options.wavelengths_nm:
                started = time.monotonic()
                trace = self._acquire(job, wavelength)
                samples += self._samples(trace, time.monotonic() - started)
        return samples

    # -- one acquisition -----------------------------------------------------------------------

    def _acquire(self, job: Job, wavelength: int) -> Trace:
        opts = self.options
        job.set("wavelength_nm", wavelength)
        job.set("pulse_width_ns", opts.pulse_width_ns)
        job.set("range_m", opts.range_m)
        job.set("averaging_s", opts.averaging)
        binary = opts.data_format == "binary"
        job.set("data_format", "REAL,32" if binary else "ASCii")
        if binary:
            job.set("byte_order", "SWAPped")
        job.run("start")
        self._wait(job, wavelength)

        points = job.get("points")
        if points < 2:
            raise Malformed(f"{job.where}: the trace has {points} points")
        values = (
            job.query_block("trace", "<f4", expected=points)
            if binary
            else job.query_values("trace", expected=points)
        )
        events = tuple(self._event(job, i) for i in range(1, job.get("event_count") + 1))
        length = job.get("fibre_length_m")
        loss = job.get("total_loss_db")
        return Trace(
            values,
            job.get("spacing_m"),
            wavelength,
            opts.pulse_width_ns,
            offset_m=job.get("offset_m"),
            averaging_s=opts.averaging,
            range_m=opts.range_m,
            events=events,
            fibre_length_m=None if length >= SCPI_NAN * 0.99 else length,
            total_loss_db=None if loss >= SCPI_NAN * 0.99 else loss,
        )

    def _wait(self, job: Job, wavelength: int) -> None:
        """Poll the status register until the acquisition is over, reporting progress; then
        `*OPC?` confirms it. DeviceTimeout (the layer then aborts it) when the budget ends."""
        started = time.monotonic()
        interval = self.options.progress_interval
        while True:
            measuring = job.get("condition") & MEASURING
            percent = 100.0 if not measuring else job.get("progress")
            self._report(Progress(self.name, wavelength, percent, time.monotonic() - started))
            if not measuring:
                break
            if job.remaining() < interval:
                raise DeviceTimeout(
                    f"{job.where}: acquisition at {wavelength} nm only {percent:.0f} % done "
                    f"after {time.monotonic() - started:.1f} s; aborted (the device timeout "
                    f"must exceed the averaging time, {self.options.averaging:g} s, plus the "
                    "trace transfer)"
                )
            time.sleep(interval)
        job.wait_complete(job.remaining(), what=f"the acquisition at {wavelength} nm")

    def _report(self, progress: Progress) -> None:
        log.debug(
            "%s: %d nm acquisition %.0f %%", self.name, progress.wavelength_nm, progress.percent
        )
        if self.on_progress is not None:
            self.on_progress(progress)

    def _event(self, job: Job, index: int) -> Event:
        answer = job.get("event", index=index)
        where = f"{job.where}: event {index}"
        fields = answer.split(",")
        if len(fields) != 5:
            raise Malformed(f"{where}: expected 5 comma-separated fields, got {answer[:80]!r}")
        distance = _number(fields[0], where)
        code = _number(fields[1], where)
        if distance is None or code is None or int(code) not in EVENT_TYPES:
            raise Malformed(f"{where}: no distance or unknown type in {answer[:80]!r}")
        return Event(
            distance,
            EVENT_TYPES[int(code)],
            _number(fields[2], where),
            _number(fields[3], where),
            _number(fields[4], where),
        )

    # -- samples -------------------------------------------------------------------------------

    def _samples(self, trace: Trace, elapsed: float) -> list[Sample]:
        link = self.options.link
        tags = {"link": link, "wavelength": str(trace.wavelength_nm)}
        at = now_ns()
        fields: dict[str, float | int | bool] = {
            "events": sum(e.type is not EventType.END for e in trace.events),
            "reflective_events": sum(e.type is EventType.REFLECTIVE for e in trace.events),
            "pulse_width_ns": float(trace.pulse_width_ns),
            "range_m": float(trace.range_m),
            "averaging_s": float(trace.averaging_s),
            "sample_spacing_m": float(trace.spacing_m),
            "points": trace.points,
            "acquisition_s": round(elapsed, 3),
        }
        if trace.fibre_length_m is not None:
            fields["fibre_length_m"] = trace.fibre_length_m
        if trace.total_loss_db is not None:
            fields["total_loss_db"] = trace.total_loss_db
            if trace.fibre_length_m:
                events_loss = sum(e.loss_db or 0.0 for e in trace.events)
                fibre_loss = trace.total_loss_db - events_loss
                fields["attenuation_db_km"] = round(fibre_loss / trace.fibre_length_m * 1e3, 4)
        samples: list[Sample] = []
        if self.baselines is not None:
            alarms, saved = self._against_baseline(trace)
            fields["baseline_saved"] = saved
            fields["alarms"] = len(alarms)
            samples += [self._alarm_sample(tags, alarm, at) for alarm in alarms]
        samples.insert(0, Sample("otdr_trace", tags, fields, at))
        if self.options.events:
            for index, event in enumerate(trace.events, start=1):
                values = {
                    "distance_m": event.distance_m,
                    "loss_db": event.loss_db,
                    "reflectance_db": event.reflectance_db,
                    "cumulative_loss_db": event.cumulative_loss_db,
                }
                samples.append(
                    Sample(
                        "otdr_event",
                        {**tags, "event": str(index), "type": event.type.value},
                        {k: v for k, v in values.items() if v is not None},
                        at,
                    )
                )
        return samples

    def _against_baseline(self, trace: Trace) -> tuple[list[Alarm], bool]:
        """The alarms against the stored baseline; with none stored, `trace` becomes it."""
        assert self.baselines is not None
        link = self.options.link
        try:
            baseline = self.baselines.load(link, trace.wavelength_nm)
            if baseline is None:
                path = self.baselines.save(link, trace)
                log.info(
                    "%s: link %s baseline at %d nm saved to %s",
                    self.name,
                    link,
                    trace.wavelength_nm,
                    path,
                )
                return [], True
        except (OSError, ValueError) as exc:
            raise PollError(f"{self.name}: baseline of link {link}: {exc}") from None
        alarms = compare(baseline, trace, self.thresholds)
        for alarm in alarms:
            log.warning(
                "%s: link %s at %d nm: %s", self.name, link, trace.wavelength_nm, alarm.message
            )
        return alarms, False

    @staticmethod
    def _alarm_sample(tags: dict[str, str], alarm: Alarm, at: int) -> Sample:
        values = {
            "message": alarm.message,
            "distance_m": alarm.distance_m,
            "loss_db": alarm.loss_db,
            "baseline_loss_db": alarm.baseline_loss_db,
            "loss_change_db": alarm.loss_change_db,
            "reflectance_db": alarm.reflectance_db,
            "length_change_m": alarm.length_change_m,
        }
        alarm_tags = {**tags, "alarm": alarm.kind}
        if alarm.event is not None:
            alarm_tags["event"] = str(alarm.event)
        return Sample(
            "otdr_alarm", alarm_tags, {k: v for k, v in values.items() if v is not None}, at
        )

    async def aclose(self) -> None:
        self.instrument.close()

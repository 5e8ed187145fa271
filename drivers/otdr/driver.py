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
import time
from collections.abc import Callable
from typing import ClassVar

from qkdtel.drivers.otdr.baseline import Alarm, BaselineStore, Thresholds, compare
from qkdtel.drivers.otdr.commands import OTDR_TABLE
from qkdtel.drivers.otdr.options import OtdrOptions
from qkdtel.drivers.otdr.otdr import AcquisitionSettings, OtdrControl, Progress
from qkdtel.drivers.otdr.trace import EventType, OtdrTrace
from qkdtel.drivers.scpi import Job, ScpiInstrument, poll_budget
from qkdtel.sdk import BlockingDriver, PollError, Sample, now_ns

log = logging.getLogger(__name__)


class OtdrDriver(BlockingDriver[OtdrOptions]):
    """One OTDR port testing one link."""

    description: ClassVar[str] = "OTDR over SCPI: trace, event table, baseline alarms"

    def __init__(self, name: str, options: OtdrOptions, timeout: float):
        super().__init__(name, options, timeout)
        self.instrument = ScpiInstrument(options.visa, OTDR_TABLE)
        self.otdr = OtdrControl(self.instrument, name)
        self.baselines = BaselineStore(options.baseline_dir) if options.baseline_dir else None
        self.thresholds = Thresholds(
            options.alarm_loss_db,
            options.alarm_total_loss_db,
            options.alarm_reflectance_db,
            options.alarm_length_m,
        )
        self.on_progress: Callable[[Progress], None] | None = None
        """Called from the worker thread at every status poll of an acquisition."""

    def poll_blocking(self) -> list[Sample]:
        samples: list[Sample] = []
        with self.instrument.job(poll_budget(self.timeout)) as job:
            for wavelength in self.options.wavelengths_nm:
                started = time.monotonic()
                trace = self._acquire(job, wavelength)
                samples += self._samples(trace, time.monotonic() - started)
        return samples

    # -- one acquisition -----------------------------------------------------------------------

    def _acquire(self, job: Job, wavelength: int) -> OtdrTrace:
        opts = self.options
        settings = AcquisitionSettings(
            wavelength_nm=wavelength,
            pulse_width_ns=opts.pulse_width_ns,
            range_m=opts.range_m,
            averaging_s=opts.averaging,
            binary=opts.data_format == "binary",
            progress_interval=opts.progress_interval,
        )
        return self.otdr.acquire(job, settings, self._report)

    def _report(self, progress: Progress) -> None:
        log.debug(
            "%s: %d nm acquisition %.0f %%", self.name, progress.wavelength_nm, progress.percent
        )
        if self.on_progress is not None:
            self.on_progress(progress)

    # -- samples -------------------------------------------------------------------------------

    def _samples(self, trace: OtdrTrace, elapsed: float) -> list[Sample]:
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

    def _against_baseline(self, trace: OtdrTrace) -> tuple[list[Alarm], bool]:
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
            raise PollError(f"{self.name}: baseline of link {link}: {exc}") from exc
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

    def close_blocking(self) -> None:
        self.instrument.close()

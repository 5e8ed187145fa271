"""The `osa` driver: one optical spectrum analyser -> `osa_sweep`, `osa_channel`,
`osa_quantum_channel` points per poll (see README.md), the full trace to a file on request.

A poll is one capture (configure, one sweep, read the trace) in a worker thread
(`BlockingDriver`): a sweep of tens of seconds never delays other devices' polls. The job is
bounded by the device's `timeout` minus a small margin, so the driver reports a stalled
instrument itself (naming the command) and recovers it -- abort, clear status -- before the
collector abandons the poll; the per-resource lock of the SCPI layer keeps a second driver
instance on the same instrument from interleaving with it.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from qkdtel.drivers.osa.analysis import Analysis, SpectrumTrace, analyse, total_power_dbm
from qkdtel.drivers.osa.options import OsaOptions
from qkdtel.drivers.osa.osa import OsaControl
from qkdtel.drivers.scpi import ScpiInstrument, poll_budget
from qkdtel.sdk import BlockingDriver, FieldValue, Malformed, Sample, now_ns

log = logging.getLogger(__name__)


class OsaDriver(BlockingDriver[OsaOptions]):
    """Optical spectrum analysers (Yokogawa AQ6370 and Anritsu MS9740A classes) over VISA."""

    description: ClassVar[str] = (
        "optical spectrum analyser over VISA/SCPI (osa_sweep, osa_channel, osa_quantum_channel)"
    )

    def __init__(self, name: str, options: OsaOptions, timeout: float):
        super().__init__(name, options, timeout)
        self.instrument = ScpiInstrument(
            options.visa, options.profile.commands, recovery_timeout=options.recovery_timeout
        )
        self.osa = OsaControl(self.instrument, options.profile)
        self.settings = options.sweep_settings()
        self._sweeps = 0

    def poll_blocking(self) -> list[Sample]:
        started = time.monotonic()
        trace = self.osa.capture(self.settings, budget=poll_budget(self.timeout))
        swept = time.monotonic() - started
        opts = self.options
        try:
            analysis = analyse(
                trace,
                spacing_ghz=opts.grid_ghz,
                channels=opts.channels,
                quantum_channels=opts.quantum_channels,
                quantum_bandwidth_ghz=opts.quantum_bandwidth_ghz,
                occupied_margin_db=opts.occupied_margin_db,
            )
        except ValueError as exc:
            raise Malformed(f"{self.instrument.where}: {exc}") from exc
        self._sweeps += 1
        trace_file = None
        if opts.trace_dir is not None and (self._sweeps - 1) % opts.trace_every == 0:
            trace_file = self._save(trace)
        return self._samples(trace, analysis, swept, trace_file)

    def close_blocking(self) -> None:
        self.instrument.close()

    def _tags(self, **more: str) -> dict[str, str]:
        tags = {"dialect": self.options.dialect, **more}
        if self.options.link is not None:
            tags["link"] = self.options.link
        return tags

    def _samples(
        self, trace: SpectrumTrace, analysis: Analysis, swept: float, trace_file: Path | None
    ) -> list[Sample]:
        stamp = now_ns()
        grid = str(self.options.grid_ghz)
        occupied = analysis.occupied
        osnrs = [c.osnr_db for c in analysis.channels if c.osnr_db is not None]
        sweep: dict[str, FieldValue] = {
            "start_nm": float(trace.wavelength_nm[0]),
            "stop_nm": float(trace.wavelength_nm[-1]),
            "points": len(trace.wavelength_nm),
            "resolution_nm": trace.resolution_nm,
            "sweep_s": round(swept, 6),
            "occupied_channels": ",".join(f"{c:g}" for c in occupied),
            "occupied_count": len(occupied),
            "total_power_dbm": total_power_dbm(trace),
        }
        if osnrs:
            sweep["min_osnr_db"] = min(osnrs)
        if trace_file is not None:
            sweep["trace_file"] = str(trace_file)
        samples = [Sample("osa_sweep", self._tags(grid=grid), sweep, stamp)]
        for channel in analysis.channels:
            fields: dict[str, FieldValue] = {
                "frequency_thz": channel.frequency_thz,
                "wavelength_nm": channel.wavelength_nm,
                "peak_power_dbm": channel.peak_dbm,
                "peak_offset_ghz": channel.peak_offset_ghz,
                "noise_dbm": channel.noise_dbm,
                "occupied": channel.occupied,
            }
            if channel.power_dbm is not None and channel.osnr_db is not None:
                fields["power_dbm"] = channel.power_dbm
                fields["osnr_db"] = channel.osnr_db
            tags = self._tags(grid=grid, channel=channel.label)
            samples.append(Sample("osa_channel", tags, fields, stamp))
        for notch in analysis.notches:
            fields = {
                "frequency_thz": notch.frequency_thz,
                "wavelength_nm": notch.wavelength_nm,
                "notch_level_dbm": notch.level_dbm,
                "in_band_noise_dbm": notch.in_band_noise_dbm,
                "in_band_bandwidth_ghz": self.options.quantum_bandwidth_ghz,
            }
            if notch.depth_db is not None and notch.reference_dbm is not None:
                fields["notch_depth_db"] = notch.depth_db
                fields["notch_reference_dbm"] = notch.reference_dbm
            tags = self._tags(channel=notch.label)
            samples.append(Sample("osa_quantum_channel", tags, fields, stamp))
        return samples

    def _save(self, trace: SpectrumTrace) -> Path | None:
        """Write the trace file and drop the oldest beyond `trace_keep`; None if it failed.

        A full or read-only disk must not cost the measurements themselves: it is logged and
        the sweep's points go out without `trace_file`.
        """
        opts = self.options
        assert opts.trace_dir is not None
        when = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = opts.trace_dir / f"{self.name}-{when}.{opts.trace_format}"
        meta = {**trace.meta, "device": self.name, "time": when}
        if opts.link is not None:
            meta["link"] = opts.link
        try:
            opts.trace_dir.mkdir(parents=True, exist_ok=True)
            SpectrumTrace(trace.wavelength_nm, trace.power_dbm, trace.resolution_nm, meta).save(
                path
            )
            kept = sorted(opts.trace_dir.glob(f"{self.name}-*.{opts.trace_format}"))
            for old in kept[: -opts.trace_keep]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            log.error("%s: cannot write the trace to %s: %s", self.name, path, exc)
            return None
        return path

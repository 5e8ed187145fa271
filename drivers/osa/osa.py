"""`OsaControl`: one API over both OSA dialects -- configure, sweep once, read the trace.

Everything dialect-specific is in the profile (`profiles.py`): the command table, how the end
of a sweep is awaited, whether the instrument sends the wavelength axis or only its limits,
and whether traces can move as binary blocks. Usable on its own (a bench script, a test):

    osa = OsaControl(ScpiInstrument(VisaSettings(resource="TCPIP::10.0.0.5::10001::SOCKET"),
                                    YOKOGAWA.commands), YOKOGAWA)
    trace = osa.capture(SweepSettings(1528, 1567, resolution_nm=0.05), budget=90)
    trace.save("link4.npz")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qkdtel.drivers.osa.analysis import SpectrumTrace
from qkdtel.drivers.osa.profiles import OsaProfile
from qkdtel.drivers.scpi import Job, ScpiInstrument
from qkdtel.sdk import Malformed


@dataclass(frozen=True)
class SweepSettings:
    """What to measure; values already checked against the profile (see `OsaOptions`)."""

    start_nm: float
    stop_nm: float
    resolution_nm: float = 0.05
    sensitivity: str = "high1"
    points: int = 2001
    binary: bool = True
    sweep_timeout: float = 60.0


class OsaControl:
    """An optical spectrum analyser of either dialect."""

    def __init__(self, instrument: ScpiInstrument, profile: OsaProfile):
        self.instrument = instrument
        self.profile = profile

    def capture(self, settings: SweepSettings, budget: float) -> SpectrumTrace:
        """Configure, sweep once, read the trace: one job of at most `budget` seconds."""
        with self.instrument.job(budget) as job:
            self.configure(job, settings)
            self.sweep(job, settings.sweep_timeout)
            return self.read_trace(job, settings)

    def configure(self, job: Job, settings: SweepSettings) -> None:
        """Vacuum wavelengths, span, resolution, sensitivity, points, single-sweep mode.

        Sent on every capture: the front panel or another program may have changed anything.
        """
        commands = self.profile.commands
        job.set("vacuum")
        job.set("start_nm", settings.start_nm)
        job.set("stop_nm", settings.stop_nm)
        job.set("resolution_nm", settings.resolution_nm)
        job.set("sensitivity", settings.sensitivity)
        if "points_auto_off" in commands:
            job.set("points_auto_off")
        job.set("points", settings.points)
        if "single_mode" in commands:
            job.set("single_mode")

    def sweep(self, job: Job, limit: float) -> None:
        """One sweep, waited for as the dialect does it (never by sleeping a guessed time)."""
        job.run("sweep")
        if self.profile.completion == "opc":
            job.wait_complete(limit)
        else:
            job.wait_until("sweep_event", lambda bits: bits & 1, limit)

    def read_trace(self, job: Job, settings: SweepSettings) -> SpectrumTrace:
        """The last sweep's trace, binary where possible."""
        binary = settings.binary and self.profile.binary is not None
        if self.profile.x_axis == "trace":
            job.set("format_binary" if binary else "format_ascii")
            points = job.get("trace_points")
            wavelength = self._values(job, "trace_x", points, binary) * 1e9  # metres -> nm
        else:
            start, stop, points = job.get("trace_condition")
            wavelength = np.linspace(start, stop, points)
        if points != settings.points:
            raise Malformed(
                f"{job.where}: the trace has {points} points, {settings.points} were configured"
            )
        power = self._values(job, "trace_y", points, binary)
        try:
            return SpectrumTrace(
                wavelength,
                power,
                settings.resolution_nm,
                {"resource": job.where, "model": self.profile.model},
            )
        except ValueError as exc:
            raise Malformed(f"{job.where}: unusable trace: {exc}") from exc

    def _values(self, job: Job, name: str, points: int, binary: bool) -> np.ndarray:
        if binary:
            assert self.profile.binary is not None
            return job.query_block(name, self.profile.binary, expected=points)
        return job.query_values(name, expected=points)

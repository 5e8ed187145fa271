"""Options of the OSA driver, as written under a device in the configuration file.

Dialect-dependent values (resolutions, point counts, sensitivities) are checked against the
dialect's profile, each error on its own key (`devices[2].resolution_nm: Anritsu MS9740A
resolutions are 0.03, 0.05, ...`). Field order matters: a rule sees only fields declared above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from qkdtel.drivers.optics import C_NM_THZ, channel_thz, on_grid
from qkdtel.drivers.osa.osa import SweepSettings
from qkdtel.drivers.osa.profiles import PROFILES, Dialect, OsaProfile, Sensitivity
from qkdtel.drivers.scpi import VisaSettings
from qkdtel.sdk import Duration, Model

C_BAND_START_NM = 1528.0
C_BAND_STOP_NM = 1567.0


def _profile(info: ValidationInfo) -> OsaProfile | None:
    dialect = info.data.get("dialect")
    return PROFILES.get(dialect) if dialect else None


class OsaOptions(Model):
    """An optical spectrum analyser watching one fibre (one link direction) of the network."""

    dialect: Dialect = Field(description="command set: yokogawa (AQ6370) or anritsu (MS9740A)")
    visa: VisaSettings = Field(description="how to reach the instrument")
    link: str | None = Field(None, min_length=1, description="link id, the `link` tag")
    start_nm: float | None = Field(None, ge=600, le=1750, description="sweep start (vacuum)")
    stop_nm: float | None = Field(None, ge=600, le=1750, description="sweep stop (vacuum)")
    center_nm: float | None = Field(None, ge=600, le=1750, description="or: sweep centre")
    span_nm: float | None = Field(None, gt=0, le=1100, description="and sweep span")
    resolution_nm: float = Field(0.05, description="resolution bandwidth")
    sensitivity: Sensitivity = Field("high1", description="normal, mid, high1, high2, high3")
    points: int = Field(2001, description="sampling points per sweep")
    trace_transfer: Literal["binary", "ascii"] | None = Field(
        None, description="how traces move; default binary where the dialect has it"
    )
    sweep_timeout: Duration = Field(60.0, description="longest a sweep may take")
    grid_ghz: Literal[100, 50] = Field(100, description="ITU-T G.694.1 grid spacing")
    channels: list[float] | None = Field(
        None, description="grid channels to report (default: every one in the span)"
    )
    quantum_channels: list[float] = Field(
        default_factory=list, description="channels of C-band quantum signals (notch analysis)"
    )
    quantum_bandwidth_ghz: float = Field(40.0, gt=0, le=200, description="quantum receiver band")
    occupied_margin_db: float = Field(10.0, gt=0, description="peak over noise = occupied")
    trace_dir: Path | None = Field(None, description="write the full trace of sweeps here")
    trace_format: Literal["npz", "csv"] = "npz"
    trace_every: int = Field(1, ge=1, description="write every n-th sweep's trace")
    trace_keep: int = Field(1440, ge=1, description="trace files kept (the newest)")
    recovery_timeout: Duration = Field(5.0, description="limit of abort + clear after trouble")

    @field_validator("visa")
    @classmethod
    def _terminations(cls, value: VisaSettings, info: ValidationInfo) -> VisaSettings:
        """The dialect's own terminations unless the file sets them."""
        profile = _profile(info)
        if profile is None:
            return value
        defaults = {
            "read_termination": profile.read_termination,
            "write_termination": profile.write_termination,
        }
        update = {k: v for k, v in defaults.items() if k not in value.model_fields_set}
        return value.model_copy(update=update) if update else value

    @field_validator("resolution_nm")
    @classmethod
    def _resolution(cls, value: float, info: ValidationInfo) -> float:
        profile = _profile(info)
        return profile.check_resolution(value) if profile else value

    @field_validator("sensitivity")
    @classmethod
    def _sensitivity(cls, value: str, info: ValidationInfo) -> str:
        profile = _profile(info)
        return profile.check_sensitivity(value) if profile else value

    @field_validator("points")
    @classmethod
    def _points(cls, value: int, info: ValidationInfo) -> int:
        profile = _profile(info)
        return profile.check_points(value) if profile else value

    @field_validator("trace_transfer")
    @classmethod
    def _transfer(cls, value: str | None, info: ValidationInfo) -> str | None:
        profile = _profile(info)
        if value == "binary" and profile is not None and profile.binary is None:
            raise ValueError(f"{profile.model} sends traces as ASCII only")
        return value

    @field_validator("channels", "quantum_channels")
    @classmethod
    def _on_grid(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        grid = info.data.get("grid_ghz", 100)
        for channel in value or ():
            if not on_grid(channel, grid):
                raise ValueError(f"{channel:g} is not a channel of the {grid} GHz grid")
        return value

    @model_validator(mode="after")
    def _span(self) -> OsaOptions:
        pairs = (self.start_nm, self.stop_nm), (self.center_nm, self.span_nm)
        given = [any(v is not None for v in pair) for pair in pairs]
        if all(given):
            raise ValueError("give start_nm/stop_nm or center_nm/span_nm, not both")
        for (a, b), names in zip(pairs, ("start_nm/stop_nm", "center_nm/span_nm"), strict=True):
            if (a is None) != (b is None):
                raise ValueError(f"{names} go together: give both")
        low, high = self.range_nm
        if low >= high:
            raise ValueError(f"the sweep must run upwards: {low:g} nm to {high:g} nm")
        wanted = sorted({*(self.channels or ()), *self.quantum_channels})
        half_thz = self.grid_ghz / 2000
        outside = [
            f"{c:g}"
            for c in wanted
            if not low <= C_NM_THZ / (channel_thz(c) + half_thz)
            or not C_NM_THZ / (channel_thz(c) - half_thz) <= high
        ]
        if outside:
            raise ValueError(
                f"channels {', '.join(outside)} are not (wholly) inside the sweep "
                f"{low:g}..{high:g} nm"
            )
        return self

    @property
    def range_nm(self) -> tuple[float, float]:
        """The sweep's start and stop (vacuum nm), whichever way it was given."""
        if self.start_nm is not None and self.stop_nm is not None:
            return self.start_nm, self.stop_nm
        if self.center_nm is not None and self.span_nm is not None:
            return self.center_nm - self.span_nm / 2, self.center_nm + self.span_nm / 2
        return C_BAND_START_NM, C_BAND_STOP_NM

    @property
    def profile(self) -> OsaProfile:
        return PROFILES[self.dialect]

    def sweep_settings(self) -> SweepSettings:
        """What one sweep is configured with, as the `OsaControl` API takes it."""
        start, stop = self.range_nm
        return SweepSettings(
            start_nm=start,
            stop_nm=stop,
            resolution_nm=self.resolution_nm,
            sensitivity=self.sensitivity,
            points=self.points,
            binary=self.binary,
            sweep_timeout=self.sweep_timeout,
        )

    @property
    def binary(self) -> bool:
        """Whether traces move as binary blocks."""
        if self.trace_transfer is None:
            return self.profile.binary is not None
        return self.trace_transfer == "binary"

"""Options of the OTDR driver, as written under a device in the configuration file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from qkdtel.drivers.scpi import VisaSettings
from qkdtel.sdk import Duration, Model


class OtdrOptions(Model):
    """One OTDR port testing one link (an optical switch in front of it is another device's
    business: configure one device per link the port reaches)."""

    visa: VisaSettings
    link: str = Field(min_length=1, description="network link id the port tests (tag `link`)")
    wavelengths_nm: list[Literal[1310, 1550]] = Field(
        default_factory=lambda: [1550], min_length=1, description="one acquisition each, in order"
    )
    pulse_width_ns: float = Field(1000.0, gt=0, description="longer: more range, less resolution")
    range_m: float = Field(
        50_000.0,
        gt=0,
        description="acquisition range; about twice the fibre (the noise after the "
        "far end locates it)",
    )
    averaging: Duration = Field(30.0, description="averaging time of one acquisition")
    progress_interval: Duration = Field(0.5, description="status polling period while acquiring")
    data_format: Literal["binary", "ascii"] = Field(
        "binary", description="trace transfer: REAL,32 block, or ASCII for firmware without it"
    )
    events: bool = Field(True, description="write one otdr_event point per event")
    baseline_dir: Path | None = Field(
        None, description="where commissioning baselines are kept; none: no comparison"
    )
    alarm_loss_db: float = Field(0.3, gt=0, description="new event / event loss change alarm")
    alarm_total_loss_db: float = Field(0.5, gt=0, description="total loss change alarm")
    alarm_reflectance_db: float = Field(
        -60.0, lt=0, description="a new reflective event at least this bright is an alarm"
    )
    alarm_length_m: float = Field(20.0, gt=0, description="far end moved by this much: alarm")

    @field_validator("wavelengths_nm")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("each wavelength once")
        return value

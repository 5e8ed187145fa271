"""Optical power meter driver: a Keysight 8163B-style lightwave multimeter on a serial line.

Why this shape: bench meters hang off RS-232 (or a USB-serial adapter), reached here as a VISA
ASRL resource through pyvisa-py, which drives pyserial, so the shared SCPI layer does the
talking: one job per instrument at a time, the error queue read after every setting, and a
pulled cable (EIO on the tty, the adapter gone) turned into an error naming the port, after
which the layer reopens the port before the next poll. The wavelength correction is set at
every poll: a meter power-cycled or touched at the bench between polls still reads right.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import Field, field_validator

from qkdtel.drivers.scpi import (
    ScpiInstrument,
    VisaSettings,
    control,
    ieee488_table,
    in_range,
    measurement,
    poll_budget,
    scaled,
    setting,
)
from qkdtel.sdk import BlockingDriver, Duration, Malformed, Model, Sample, now_ns

_HEAD = ":SENSe{slot}:CHANnel{channel}:POWer"

POWER_METER_TABLE = ieee488_table(
    "Keysight 8163B / 8164B lightwave multimeter (programming guide, SENSe and READ subsystems)",
    wavelength_nm=control(
        f"{_HEAD}:WAVelength?",
        f"{_HEAD}:WAVelength {{value:g}}NM",
        parse=scaled(1e9),
        validate=in_range(800, 1700, "nm"),
        doc="wavelength the head's responsivity is corrected for",
    ),
    unit=setting(f"{_HEAD}:UNIT {{value}}", doc="0: dBm, 1: W"),
    averaging_s=setting(f"{_HEAD}:ATIMe {{value:g}}S", doc="averaging time of one reading"),
    power=measurement(":READ{slot}:CHANnel{channel}:POWer?", parse=float, doc="one reading"),
)

NO_LIGHT_DBM = -200.0
"""Readings below this are not light (some heads answer -inf or -999 dBm with the port dark)."""


class Head(Model):
    """One optical head of the meter."""

    slot: int = Field(1, ge=1, le=4, description="mainframe slot of the module")
    channel: int = Field(1, ge=1, le=2, description="head of a dual module")
    wavelength_nm: float = Field(1550.0, ge=800, le=1700, description="wavelength corrected for")
    averaging: Duration = Field(0.1, le=10, description="averaging time of one reading")
    link: str | None = Field(None, description="link whose light the head sees (tag `link`)")


class PowerMeterOptions(Model):
    """The meter: its serial line and the heads to read."""

    visa: VisaSettings
    heads: list[Head] = Field(default_factory=lambda: [Head()], min_length=1)

    @field_validator("heads")
    @classmethod
    def _distinct(cls, heads: list[Head]) -> list[Head]:
        seen = [(h.slot, h.channel) for h in heads]
        if len(set(seen)) != len(seen):
            raise ValueError("each slot/channel once")
        return heads


class PowerMeterDriver(BlockingDriver[PowerMeterOptions]):
    """One `optical_power` point per head per poll."""

    description: ClassVar[str] = "optical power meter (Keysight 816x SCPI) over RS-232"

    def __init__(self, name: str, options: PowerMeterOptions, timeout: float):
        super().__init__(name, options, timeout)
        self.instrument = ScpiInstrument(options.visa, POWER_METER_TABLE)

    def poll_blocking(self) -> list[Sample]:
        # A pulled serial line surfaces from the shared SCPI layer as Refused; the layer drops
        # the dead port and opens it afresh at the next poll.
        return self._read_heads()

    def _read_heads(self) -> list[Sample]:
        samples = []
        with self.instrument.job(poll_budget(self.timeout)) as job:
            for head in self.options.heads:
                where = {"slot": head.slot, "channel": head.channel}
                job.set("wavelength_nm", head.wavelength_nm, **where)
                job.set("unit", 0, **where)
                job.set("averaging_s", head.averaging, **where)
                dbm = job.get("power", **where)
                if not math.isfinite(dbm) or dbm > 40:
                    raise Malformed(
                        f"{job.where}: slot {head.slot} head {head.channel} read {dbm!r} dBm"
                    )
                tags = {
                    "slot": str(head.slot),
                    "channel": str(head.channel),
                    "wavelength": f"{head.wavelength_nm:g}",
                }
                if head.link:
                    tags["link"] = head.link
                fields = {"light": dbm > NO_LIGHT_DBM}
                if dbm > NO_LIGHT_DBM:
                    fields["power_dbm"] = round(dbm, 4)
                samples.append(Sample("optical_power", tags, fields, now_ns()))
        return samples

    def close_blocking(self) -> None:
        self.instrument.close()

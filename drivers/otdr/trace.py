"""The OTDR trace and event-table model shared by the driver, the baselines and the simulator.

A trace is what an OTDR displays: backscattered power against distance, in dB on the "5 log"
scale every OTDR uses (half of 10 log10 of the round-trip power), so the slope of a fibre
section reads directly as its one-way attenuation in dB/km and a step as the one-way loss of an
event. Distances are fibre metres as the instrument computes them from its group index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from qkdtel.drivers.optics import SPEED_OF_LIGHT_M_S

WAVELENGTHS_NM = (1310, 1550)
"""The two wavelengths of the instruments this driver drives (O-band and C-band lasers)."""

GROUP_INDEX = {1310: 1.4677, 1550: 1.4682}
"""Group index of G.652 single-mode fibre (Corning SMF-28 data sheet values)."""

BACKSCATTER_1NS_DB = {1310: -79.4, 1550: -81.7}
"""Rayleigh backscatter coefficient of G.652 fibre for a 1 ns pulse (dB). It converts the height
of a reflective spike above the backscatter into the reflectance of the event (and back, in the
simulator); instruments keep it as a setting, SOR files store it."""


def pulse_length_m(pulse_width_ns: float, group_index: float) -> float:
    """Length of fibre one pulse covers on the trace (c tau / 2n): the width of every spike and
    the run of every step, so the scale of every window the analysis uses."""
    return SPEED_OF_LIGHT_M_S * pulse_width_ns * 1e-9 / (2.0 * group_index)


class EventType(StrEnum):
    """Kinds of event in an event table."""

    REFLECTIVE = "reflective"  # a connector, patch panel, loop-back, crack: a spike
    NON_REFLECTIVE = "non_reflective"  # a fusion splice, bend, pressure point: a step down
    END = "end"  # the far end of the fibre


@dataclass(frozen=True)
class OtdrEvent:
    """One row of an event table (the instrument's or ours)."""

    distance_m: float
    type: EventType
    loss_db: float | None = None  # None where it cannot be measured (end, events too close)
    reflectance_db: float | None = None  # reflective events only
    cumulative_loss_db: float | None = None  # loss from the start of the fibre to this event

    @property
    def reflective(self) -> bool:
        return self.type is not EventType.NON_REFLECTIVE


@dataclass(frozen=True)
class OtdrTrace:
    """One acquisition: evenly spaced samples in dB (5 log scale) and how they were taken."""

    values_db: np.ndarray
    spacing_m: float
    wavelength_nm: int
    pulse_width_ns: float
    offset_m: float = 0.0
    group_index: float = 0.0  # 0: the standard value for the wavelength
    backscatter_db: float = 0.0  # 0: the standard 1 ns coefficient for the wavelength
    averaging_s: float = 0.0
    range_m: float = 0.0
    events: tuple[OtdrEvent, ...] = field(default=())
    fibre_length_m: float | None = None
    total_loss_db: float | None = None

    def __post_init__(self) -> None:
        values = np.asarray(self.values_db, dtype=np.float64)
        if values.ndim != 1 or values.size < 2:
            raise ValueError("a trace needs a one-dimensional array of at least 2 samples")
        if not self.spacing_m > 0:
            raise ValueError(f"sample spacing must be > 0 m, got {self.spacing_m}")
        if self.wavelength_nm not in GROUP_INDEX and not (self.group_index and self.backscatter_db):
            raise ValueError(
                f"wavelength {self.wavelength_nm} nm has no standard group index: give one"
            )
        object.__setattr__(self, "values_db", values)
        if not self.group_index:
            object.__setattr__(self, "group_index", GROUP_INDEX[self.wavelength_nm])
        if not self.backscatter_db:
            object.__setattr__(self, "backscatter_db", BACKSCATTER_1NS_DB[self.wavelength_nm])

    @property
    def points(self) -> int:
        return int(self.values_db.size)

    @property
    def pulse_length_m(self) -> float:
        return pulse_length_m(self.pulse_width_ns, self.group_index)

"""What an OTDR at one end of a simulated link sees, and the synthetic trace it acquires.

A link of the topology has a length and a C-band loss. How that loss is made up is not
published, so `route_for_link` invents a plausible layout, the same every time for a link and a
seed: G.652 fibre at 0.20 dB/km (1550 nm), a fusion splice every few km (cable reels), and the
rest of the loss in reflective connectors at intermediate patch panels (the sources note that
the fibres cross patch panels of the production network, which is why MadQCI links lose more
than their length explains). The OTDR's own front connector is at 0 m; the far end is an open
connector (a Fresnel reflection). With `loopback` the far site patches the fibre pair back, as
in the published Almagro-Norte capture: the trace runs out and back, twice the length.

Faults (`FibreRoute.with_added_loss`, `with_reflection`, `with_break`) add an event at a
distance, as a bend, a crushed cable or a bad new connector would, or cut the fibre there.

The trace is built in linear power: backscatter falling with attenuation and event losses,
reflections as spikes whose height follows from their reflectance, everything smeared by the
pulse, plus Gaussian receiver noise whose level falls with pulse energy and averaging time.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, replace

import numpy as np

from qkdtel.drivers.otdr.trace import BACKSCATTER_1NS_DB, GROUP_INDEX, pulse_length_m
from qkdtel.sims.topology import Link

ATTENUATION_DB_KM = {1550: 0.20, 1310: 0.35}
"""G.652 attenuation; a link whose loss is below this (and its splices) gets lower values."""
FRONT_REFLECTANCE_DB = -45.0
END_REFLECTANCE_DB = -14.7  # flat open connector in air (4 % Fresnel)
LOOPBACK_LOSS_DB = 0.6  # two connectors of the patch cord closing the loop
LOOPBACK_REFLECTANCE_DB = -40.0
DYNAMIC_RANGE_DB = 28.0
"""Noise level below the backscatter at 0 m for a 1 us pulse averaged for 30 s (5 log dB)."""
SATURATION_DB = 22.0
"""The receiver clips this far above the backscatter level at 0 m (launch and end spikes)."""


@dataclass(frozen=True)
class FibreEvent:
    """One feature of the fibre (ground truth, not a measurement)."""

    distance_m: float
    loss_db: float
    reflectance_db: float | None  # None: non-reflective
    kind: str  # splice, patch_panel, loopback, bend, connector (faults say what they model)


@dataclass(frozen=True)
class FibreRoute:
    """The fibre an OTDR at one end of a link tests: from its front connector to the far end."""

    link: str
    length_m: float
    attenuation_db_km: dict[int, float]
    events: tuple[FibreEvent, ...]  # between 0 and length_m, sorted
    end_reflectance_db: float = END_REFLECTANCE_DB

    def loss_db(self, wavelength_nm: int) -> float:
        """End-to-end loss: fibre plus every event between the front connector and the end."""
        fibre = self.attenuation_db_km[wavelength_nm] * self.length_m / 1000.0
        return fibre + sum(e.loss_db for e in self.events)

    def with_added_loss(self, distance_m: float, loss_db: float, kind: str = "bend") -> FibreRoute:
        """The route with a new non-reflective loss (a bend or a crushed cable) at a distance."""
        return self._with(FibreEvent(distance_m, loss_db, None, kind))

    def with_reflection(
        self, distance_m: float, reflectance_db: float, loss_db: float = 0.3, kind="connector"
    ) -> FibreRoute:
        """The route with a new reflective event (a connector, a crack) at a distance."""
        return self._with(FibreEvent(distance_m, loss_db, reflectance_db, kind))

    def with_break(self, distance_m: float, reflectance_db: float = -30.0) -> FibreRoute:
        """The route cut at a distance (a dig-up): the fibre now ends there, with a rough,
        weakly reflective break."""
        if not 0 < distance_m < self.length_m:
            raise ValueError(
                f"link {self.link}: a break at {distance_m:g} m is outside the fibre "
                f"(0..{self.length_m:g} m)"
            )
        events = tuple(e for e in self.events if e.distance_m < distance_m)
        return replace(self, length_m=distance_m, events=events, end_reflectance_db=reflectance_db)

    def from_far_end(self) -> FibreRoute:
        """The same fibre tested from its other end: each event at the mirrored distance (the
        far end's open connector stays the end: both ends are patch-panel connectors)."""
        events = (
            replace(e, distance_m=round(self.length_m - e.distance_m, 1)) for e in self.events
        )
        return replace(self, events=tuple(sorted(events, key=lambda e: e.distance_m)))

    def _with(self, event: FibreEvent) -> FibreRoute:
        if not 0 < event.distance_m < self.length_m:
            raise ValueError(
                f"link {self.link}: a fault at {event.distance_m:g} m is outside the fibre "
                f"(0..{self.length_m:g} m)"
            )
        if event.loss_db < 0:
            raise ValueError(f"link {self.link}: a fault's loss must be >= 0 dB")
        events = tuple(sorted((*self.events, event), key=lambda e: e.distance_m))
        return replace(self, events=events)


def _spread(rng: random.Random, length_m: float, count: int, margin_m: float) -> list[float]:
    """`count` positions in (margin, length - margin), at least 2 x margin apart."""
    if count <= 0:
        return []
    slot = (length_m - 2 * margin_m) / count
    return [margin_m + slot * (i + rng.uniform(0.3, 0.7)) for i in range(count)]


def route_for_link(link: Link, seed: int = 0, loopback: bool = False) -> FibreRoute:
    """The invented but fixed layout of `link` (see the module docstring)."""
    rng = random.Random(zlib.crc32(f"{link.id}/{seed}".encode()))
    length_m = link.length_km * 1000.0
    splices = max(0, int(link.length_km // 4))
    splice_losses = [round(rng.uniform(0.08, 0.15), 3) for _ in range(splices)]
    alpha = ATTENUATION_DB_KM[1550]
    # one patch panel per ~12 km, more where the loss is high (at most ~2.5 dB each)
    excess_estimate = link.loss_db - alpha * link.length_km - sum(splice_losses)
    panels = min(4, max(1, round(link.length_km / 12), math.ceil(excess_estimate / 2.5)))
    floor = sum(splice_losses) + 0.2 * panels  # the least the events can take
    if alpha * link.length_km + floor > link.loss_db:  # a good link: better fibre
        alpha = max(0.0, (link.loss_db - floor) / link.length_km)
    excess = link.loss_db - alpha * link.length_km - sum(splice_losses)
    weights = [rng.uniform(0.7, 1.3) for _ in range(panels)]
    panel_losses = [round(excess * w / sum(weights), 3) for w in weights]
    # keep the C-band loss exact despite rounding
    panel_losses[-1] = round(excess - sum(panel_losses[:-1]), 3)

    margin = min(1000.0, length_m / (2 * (splices + panels + 1)))
    positions = _spread(rng, length_m, splices + panels, margin)
    kinds = ["splice"] * splices + ["patch_panel"] * panels
    rng.shuffle(kinds)
    events: list[FibreEvent] = []
    for position, kind in zip(positions, kinds, strict=True):
        if kind == "splice":
            events.append(FibreEvent(round(position, 1), splice_losses.pop(), None, kind))
        else:
            reflectance = round(rng.uniform(-55.0, -42.0), 1)
            events.append(FibreEvent(round(position, 1), panel_losses.pop(), reflectance, kind))
    attenuation = {1550: alpha, 1310: alpha * ATTENUATION_DB_KM[1310] / ATTENUATION_DB_KM[1550]}
    route = FibreRoute(link.id, length_m, attenuation, tuple(events))
    if loopback:
        back = [replace(e, distance_m=round(2 * length_m - e.distance_m, 1)) for e in events]
        loop = FibreEvent(length_m, LOOPBACK_LOSS_DB, LOOPBACK_REFLECTANCE_DB, "loopback")
        route = FibreRoute(link.id, 2 * length_m, attenuation, (*events, loop, *reversed(back)))
    return route


@dataclass(frozen=True)
class Acquisition:
    """Instrument settings of one acquisition."""

    wavelength_nm: int
    pulse_width_ns: float
    range_m: float
    averaging_s: float

    @property
    def spacing_m(self) -> float:
        """Sample spacing: the finest of 0.25, 0.5, 1, 2, 4... m that fits 64 Ki points."""
        spacing = 0.25
        while self.range_m / spacing > 65536:
            spacing *= 2
        return spacing

    @property
    def points(self) -> int:
        return int(self.range_m / self.spacing_m) + 1


def noise_level_db(acquisition: Acquisition) -> float:
    """RMS noise relative to the backscatter at 0 m (5 log dB): more pulse energy and longer
    averaging push it down (averaging N times gains 5 log10 sqrt(N) = 2.5 log10 N)."""
    energy = 5.0 * np.log10(acquisition.pulse_width_ns / 1000.0)
    averaging = 2.5 * np.log10(max(acquisition.averaging_s, 0.1) / 30.0)
    return -(DYNAMIC_RANGE_DB + energy + averaging)


def _smear(power: np.ndarray, width: int) -> np.ndarray:
    """What a pulse `width` samples long makes of `power`: each sample sums the `width` samples
    up to it (a trailing moving average), so steps become ramps and a point reflection a
    rectangle; the event sits where the ramp or rectangle starts."""
    if width <= 1:
        return power
    total = np.concatenate(([0.0], np.cumsum(power)))
    out = np.empty_like(power)
    out[width:] = (total[width + 1 :] - total[1:-width]) / width
    out[:width] = total[1 : width + 1] / width  # nothing precedes the front connector
    return out


def synthesize(route: FibreRoute, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """The trace (dB, 5 log scale, float32) the instrument acquires of `route`."""
    wavelength = acquisition.wavelength_nm
    if wavelength not in GROUP_INDEX:
        raise ValueError(f"no laser at {wavelength} nm (have {sorted(GROUP_INDEX)})")
    spacing, points = acquisition.spacing_m, acquisition.points
    z = spacing * np.arange(points)
    alpha = route.attenuation_db_km[wavelength] / 1000.0
    one_way = -alpha * np.minimum(z, route.length_m)
    for event in route.events:
        one_way[z >= event.distance_m] -= event.loss_db
    backscatter = np.where(z < route.length_m, 10.0 ** (one_way / 5.0), 0.0)

    # Reflections: a spike whose height H over the backscatter satisfies
    # R = B_1ns + 10 log10(D_ns) + 10 log10(10^(H/5) - 1), the relation OTDRs use to measure R.
    ratio_offset = BACKSCATTER_1NS_DB[wavelength] + 10.0 * np.log10(acquisition.pulse_width_ns)
    reflective = [
        (0.0, FRONT_REFLECTANCE_DB),
        *((e.distance_m, e.reflectance_db) for e in route.events if e.reflectance_db is not None),
        (route.length_m, route.end_reflectance_db),
    ]
    spikes = np.zeros(points)
    width = max(
        1, round(pulse_length_m(acquisition.pulse_width_ns, GROUP_INDEX[wavelength]) / spacing)
    )
    for distance, reflectance in reflective:
        index = round(distance / spacing)
        if index >= points:
            continue
        level = 10.0 ** (np.interp(distance - spacing, z, one_way) / 5.0)
        spikes[index] += level * 10.0 ** ((reflectance - ratio_offset) / 10.0) * width
    power = _smear(backscatter + spikes, width)
    # The receiver recovers from a spike with a short exponential tail (part of the dead zone):
    # tail[i] = max over j <= i of reflected[j] exp(-(i - j) / tau), a running max in log scale.
    tau = max(1.0, width / 4.0)
    reflected = _smear(spikes, width)
    steps = np.arange(points) / tau
    with np.errstate(divide="ignore"):
        peak = np.maximum.accumulate(np.log(reflected) + steps) - steps
    power = power - reflected + np.exp(peak)

    noise = 10.0 ** (noise_level_db(acquisition) / 5.0)
    power = power + rng.normal(0.0, noise, points)
    power = np.clip(power, noise * 0.05, 10.0 ** (SATURATION_DB / 5.0))
    return (5.0 * np.log10(power)).astype(np.float32)

"""What an OSA on a link of the simulated network sees: carriers, a noise floor, the CV notch.

Published (DOMAIN.md, MadQCI descriptions) and used as is: which ITU 100 GHz channels carry
classical data and service channels on the border link 4 (Quevedo -> Norte: data 21-23, IDQ
service channel 30, CV quantum channel in a notch at 37/38) and on link 8 (data 25, 29, 34,
service/distillation 59-60); link 3's plan is invented (`INVENTED_PLANS`). Taken from the
topology (`sims/madqci.yaml`): the link's C-band loss, and the C-band quantum channels crossing
the link, whose band the multiplexers notch out of the classical noise floor.

Invented (not published), chosen to be plausible for unamplified metro links: launch powers
(data 0 dBm, service -3 dBm), signal widths (10G NRZ 20 GHz, service 10 GHz FWHM), the
transmitters' broadband noise (-35 dBm per 0.1 nm at launch), the monitor tap (10 dB), the
notch (25 dB deep, 40 GHz beyond the outer quantum channels, 20 GHz edges), and 0.05 dB of
measurement noise per point. The analysers' own noise floors are in `server.py`.

Units: frequency THz, wavelength nm in vacuum, power dBm (or mW where named `_mw`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qkdtel.drivers.optics import C_NM_THZ, channel_thz
from qkdtel.sims.topology import Topology

DATA_LAUNCH_DBM = 0.0
SERVICE_LAUNCH_DBM = -3.0
DATA_WIDTH_GHZ = 20.0
SERVICE_WIDTH_GHZ = 10.0
LAUNCH_NOISE_DBM_PER_01NM = -35.0
TAP_LOSS_DB = 10.0
NOTCH_DEPTH_DB = 25.0
NOTCH_MARGIN_GHZ = 40.0
NOTCH_EDGE_GHZ = 20.0
TRACE_NOISE_DB = 0.05

PUBLISHED_PLANS: dict[str, dict[str, tuple[int, ...]]] = {
    "4": {"data": (21, 22, 23), "service": (30,)},
    "8": {"data": (25, 29, 34), "service": (59, 60)},
}
INVENTED_PLANS: dict[str, dict[str, tuple[int, ...]]] = {
    # Link 3 (Quijote-Quevedo): 5 classical channels are published, not which; chosen like
    # link 4's (the same IDQ service channel 30), clear of the CV notch at 37/38.
    "3": {"data": (21, 22, 25, 26), "service": (30,)},
}
CHANNEL_PLANS = {**PUBLISHED_PLANS, **INVENTED_PLANS}


@dataclass(frozen=True)
class Carrier:
    """A classical signal as it reaches the OSA."""

    channel: int
    kind: str  # data | service
    power_dbm: float  # total power at the OSA input
    width_ghz: float  # FWHM of the signal spectrum

    @property
    def frequency_thz(self) -> float:
        return channel_thz(self.channel)


@dataclass(frozen=True)
class LinkSpectrum:
    """The optical spectrum of one link at its monitor tap (before any injected extra loss)."""

    link: str
    loss_db: float
    carriers: tuple[Carrier, ...]
    notch_channels: tuple[int, ...]
    noise_dbm_per_01nm: float  # broadband floor at the tap, outside the notch

    def with_extra_loss(self, extra_db: float) -> LinkSpectrum:
        """The same link with `extra_db` more fibre loss (a bend, a dirty connector)."""
        if not extra_db:
            return self
        carriers = tuple(
            Carrier(c.channel, c.kind, c.power_dbm - extra_db, c.width_ghz) for c in self.carriers
        )
        return LinkSpectrum(
            self.link,
            self.loss_db + extra_db,
            carriers,
            self.notch_channels,
            self.noise_dbm_per_01nm - extra_db,
        )

    def osnr_db(self, carrier: Carrier) -> float:
        """OSNR of a carrier in the 0.1 nm reference bandwidth (IEC 61280-2-9)."""
        return carrier.power_dbm - self.noise_dbm_per_01nm

    def notch_factor(self, frequency_thz: np.ndarray) -> np.ndarray:
        """Linear attenuation of the noise floor by the notch filter (1 outside it)."""
        if not self.notch_channels:
            return np.ones_like(frequency_thz)
        low = channel_thz(min(self.notch_channels)) - NOTCH_MARGIN_GHZ / 1000
        high = channel_thz(max(self.notch_channels)) + NOTCH_MARGIN_GHZ / 1000
        edge = NOTCH_EDGE_GHZ / 1000
        # how far into the stop band (0 outside, 1 from `edge` in); raised-cosine transition
        inside = np.minimum(frequency_thz - (low - edge), (high + edge) - frequency_thz)
        ramp = np.clip(inside / edge, 0.0, 1.0)
        return 10 ** (-NOTCH_DEPTH_DB * (0.5 - 0.5 * np.cos(np.pi * ramp)) / 10)

    def displayed_mw(
        self, wavelength_nm: np.ndarray, rbw_nm: float, floor_dbm: float
    ) -> np.ndarray:
        """Noise-free power (mW) an OSA shows at each (vacuum) wavelength.

        `rbw_nm` is its resolution bandwidth, `floor_dbm` its own noise floor (set by its
        sensitivity), added to the light.
        """
        frequency = C_NM_THZ / wavelength_nm
        rbw_ghz = rbw_nm * frequency**2 / C_NM_THZ * 1000  # Δf = Δλ f² / c
        per_01nm_ghz = 0.1 * frequency**2 / C_NM_THZ * 1000
        floor = 10 ** (self.noise_dbm_per_01nm / 10) * rbw_ghz / per_01nm_ghz
        power = floor * self.notch_factor(frequency)
        for carrier in self.carriers:
            sigma_ghz = np.sqrt(carrier.width_ghz**2 + rbw_ghz**2) / 2.3548  # FWHM -> sigma
            offset_ghz = (frequency - carrier.frequency_thz) * 1000
            shape = np.exp(-0.5 * (offset_ghz / sigma_ghz) ** 2) / (sigma_ghz * np.sqrt(2 * np.pi))
            power = power + 10 ** (carrier.power_dbm / 10) * rbw_ghz * shape
        return power + 10 ** (floor_dbm / 10)

    def trace_dbm(
        self,
        wavelength_nm: np.ndarray,
        rbw_nm: float,
        floor_dbm: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """One sweep: the displayed spectrum in dBm with measurement noise."""
        clean = 10 * np.log10(self.displayed_mw(wavelength_nm, rbw_nm, floor_dbm))
        return clean + rng.normal(0.0, TRACE_NOISE_DB, size=clean.shape)


def link_spectrum(topology: Topology, link: str) -> LinkSpectrum:
    """The spectrum of `link` in `topology` (only links with a channel plan)."""
    plan = CHANNEL_PLANS.get(link)
    if plan is None:
        known = ", ".join(sorted(CHANNEL_PLANS))
        raise ValueError(f"no channel plan for link {link!r} (known: {known})")
    fibre = next((item for item in topology.links if item.id == link), None)
    if fibre is None:
        raise ValueError(f"the topology {topology.name} has no link {link!r}")
    at_tap = fibre.loss_db + TAP_LOSS_DB
    carriers = tuple(
        Carrier(
            channel,
            kind,
            (DATA_LAUNCH_DBM if kind == "data" else SERVICE_LAUNCH_DBM) - at_tap,
            DATA_WIDTH_GHZ if kind == "data" else SERVICE_WIDTH_GHZ,
        )
        for kind, channels in plan.items()
        for channel in channels
    )
    quantum = sorted(
        {
            channel.itu
            for channel in topology.channels
            if channel.band == "C" and channel.itu is not None and link in channel.link_ids
        }
    )
    return LinkSpectrum(
        link=link,
        loss_db=fibre.loss_db,
        carriers=tuple(sorted(carriers, key=lambda c: c.channel)),
        notch_channels=tuple(quantum),
        noise_dbm_per_01nm=LAUNCH_NOISE_DBM_PER_01NM - at_tap,
    )

"""Spectrum analysis on the ITU-T G.694.1 DWDM grid: channels, OSNR, the quantum-channel notch.

Grid: channel N is centred at 190.0 + 0.1 N THz (100 GHz grid, the numbering MadQCI uses:
ch 34 = 193.4 THz); the 50 GHz grid adds the half-channels N.5 (193.45 THz is "34.5"). Each
channel owns the band centre ± spacing/2.

Per channel (IEC 61280-2-9 interpolation method):
- noise: the displayed level at the two band edges (the gaps between channels; median of a
  window of ± spacing/20 around each), averaged in mW -- the noise under the carrier, per
  resolution bandwidth, then scaled to the 0.1 nm reference bandwidth;
- peak: the highest displayed level in the band and where it is (`peak_offset_ghz` from the
  grid frequency: a drifting laser shows here);
- power: the light integrated over the band (sum of mW x point spacing / resolution
  bandwidth), minus the noise over the same band: the carrier's total power, independent of
  the resolution bandwidth;
- OSNR: power over noise in 0.1 nm;
- occupied: the peak stands `occupied_margin_db` or more above the noise.
On a 50 GHz grid, 10G carriers (about 20 GHz wide) still put light on the band edges: the
interpolation method then overestimates noise and underestimates OSNR (ITU-T G.697 says so
too); the occupancy call is unaffected.

Per quantum channel (the notch the multiplexers cut for the CV quantum signal):
- level: median displayed level within ± `quantum_bandwidth_ghz`/2 of the channel;
- reference: the median level of the nearest grid channels below and above the group of quantum
  channels that carry no light (up to `NEIGHBOUR_SEARCH` channels away), averaged in mW;
- notch depth: reference minus level (dB);
- in-band noise: the light integrated over ± `quantum_bandwidth_ghz`/2 (dBm): what leaks into
  the quantum receiver's band, the figure that hurts the QKD link.

Wavelengths are in vacuum: the ITU grid is defined in frequency (`qkdtel.drivers.optics`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qkdtel.drivers.optics import (
    C_NM_THZ,
    GRID_ORIGIN_THZ,
    channel_label,
    channel_thz,
    grid_step,
)

REFERENCE_BANDWIDTH_NM = 0.1
NEIGHBOUR_SEARCH = 4


@dataclass(frozen=True)
class SpectrumTrace:
    """One sweep: vacuum wavelengths (nm, ascending) and displayed levels (dBm)."""

    wavelength_nm: np.ndarray
    power_dbm: np.ndarray
    resolution_nm: float
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.wavelength_nm.shape != self.power_dbm.shape or self.wavelength_nm.ndim != 1:
            raise ValueError(
                f"wavelength ({self.wavelength_nm.shape}) and power ({self.power_dbm.shape}) "
                "must be 1-D arrays of one length"
            )
        if len(self.wavelength_nm) < 3:
            raise ValueError(f"a trace needs at least 3 points, not {len(self.wavelength_nm)}")
        if np.any(np.diff(self.wavelength_nm) <= 0):
            raise ValueError("wavelengths must increase from point to point")

    @property
    def frequency_thz(self) -> np.ndarray:
        return C_NM_THZ / self.wavelength_nm

    def save(self, path: str | Path) -> Path:
        """Write the trace as `.npz` or `.csv` (by suffix), atomically (temp file + rename)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".npz", ".csv"):
            raise ValueError(f"{path}: a trace file ends in .npz or .csv")
        temp = path.with_name(f".{path.name}.tmp")
        if suffix == ".npz":
            with temp.open("wb") as out:
                np.savez_compressed(
                    out,
                    wavelength_nm=self.wavelength_nm,
                    power_dbm=self.power_dbm,
                    resolution_nm=np.float64(self.resolution_nm),
                    meta=np.array(json.dumps(self.meta)),
                )
        else:
            header = "\n".join(
                [f"{k}: {v}" for k, v in {**self.meta, "resolution_nm": self.resolution_nm}.items()]
                + ["wavelength_nm,power_dbm"]
            )
            data = np.column_stack([self.wavelength_nm, self.power_dbm])
            np.savetxt(temp, data, delimiter=",", fmt=["%.6f", "%.3f"], header=header)
        os.replace(temp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SpectrumTrace:
        """Read a trace written by `save`."""
        path = Path(path)
        if path.suffix.lower() == ".npz":
            with np.load(path) as data:
                return cls(
                    data["wavelength_nm"],
                    data["power_dbm"],
                    float(data["resolution_nm"]),
                    json.loads(str(data["meta"])),
                )
        meta: dict[str, str] = {}
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.startswith("# ") or ": " not in line:
                    break
                key, _, value = line[2:].rstrip("\n").partition(": ")
                meta[key] = value
        data = np.loadtxt(path, delimiter=",", comments="#")
        resolution = float(meta.pop("resolution_nm"))
        return cls(data[:, 0], data[:, 1], resolution, meta)


@dataclass(frozen=True)
class ChannelResult:
    """One grid channel of a sweep."""

    channel: float
    frequency_thz: float
    wavelength_nm: float
    peak_dbm: float
    peak_offset_ghz: float
    noise_dbm: float  # in the 0.1 nm reference bandwidth
    power_dbm: float | None  # None when no light above the noise
    osnr_db: float | None
    occupied: bool

    @property
    def label(self) -> str:
        return channel_label(self.channel)


@dataclass(frozen=True)
class NotchResult:
    """One quantum channel of a sweep."""

    channel: float
    frequency_thz: float
    wavelength_nm: float
    level_dbm: float  # displayed level (per resolution bandwidth) at the channel
    reference_dbm: float | None  # the floor outside the notch, same units
    depth_db: float | None
    in_band_noise_dbm: float  # integrated over the quantum band

    @property
    def label(self) -> str:
        return channel_label(self.channel)


@dataclass(frozen=True)
class Analysis:
    channels: list[ChannelResult]
    notches: list[NotchResult]

    @property
    def occupied(self) -> list[float]:
        """Channels carrying classical light, in channel order."""
        return [c.channel for c in self.channels if c.occupied]


def _mw(dbm: np.ndarray | float) -> np.ndarray | float:
    return 10 ** (np.asarray(dbm) / 10)


def _dbm(mw: float) -> float:
    return float(10 * np.log10(mw))


class _Spectrum:
    """A trace in frequency order with the helpers the analysis needs."""

    def __init__(self, trace: SpectrumTrace):
        order = np.argsort(trace.frequency_thz)
        self.f = trace.frequency_thz[order]
        self.level = trace.power_dbm[order]
        self.mw = _mw(self.level)
        self.rbw_nm = trace.resolution_nm
        # each point's share of the wavelength axis, for integrating mW over bands
        wavelength = C_NM_THZ / self.f
        self.step_nm = np.abs(np.gradient(wavelength))

    def covers(self, low_thz: float, high_thz: float) -> bool:
        return self.f[0] <= low_thz and high_thz <= self.f[-1]

    def window(self, low_thz: float, high_thz: float) -> slice:
        start, stop = np.searchsorted(self.f, [low_thz, high_thz])
        if stop - start < 1:
            raise ValueError(
                f"the trace has no point between {low_thz:.4f} and {high_thz:.4f} THz: "
                "use more points or a narrower span"
            )
        return slice(int(start), int(stop))

    def median_mw(self, centre_thz: float, half_ghz: float) -> float:
        band = self.window(centre_thz - half_ghz / 1000, centre_thz + half_ghz / 1000)
        return float(np.median(self.mw[band]))

    def integrated_mw(self, band: slice) -> float:
        return float(np.sum(self.mw[band] * self.step_nm[band]) / self.rbw_nm)


def total_power_dbm(trace: SpectrumTrace) -> float:
    """All the light in the trace (dBm): the sum a power meter behind the same tap would read."""
    spectrum = _Spectrum(trace)
    return _dbm(spectrum.integrated_mw(slice(None)))


def grid_channels(trace: SpectrumTrace, spacing_ghz: int) -> list[float]:
    """Every channel of the grid whose whole band lies inside the trace."""
    step = grid_step(spacing_ghz)
    f = trace.frequency_thz
    half = spacing_ghz / 2000
    low = np.ceil(((f.min() + half) - GRID_ORIGIN_THZ) / 0.1 / step) * step
    high = np.floor(((f.max() - half) - GRID_ORIGIN_THZ) / 0.1 / step) * step
    return [round(float(c), 1) for c in np.arange(low, high + step / 2, step)]


def analyse(
    trace: SpectrumTrace,
    spacing_ghz: int = 100,
    channels: Sequence[float] | None = None,
    quantum_channels: Iterable[float] = (),
    quantum_bandwidth_ghz: float = 40.0,
    occupied_margin_db: float = 10.0,
) -> Analysis:
    """Analyse one sweep (see the module doc); `channels` limits the report (default: all)."""
    spectrum = _Spectrum(trace)
    step = grid_step(spacing_ghz)
    every = grid_channels(trace, spacing_ghz)
    if not every:
        raise ValueError(f"the trace does not span one whole {spacing_ghz} GHz channel")
    results = {c: _channel(spectrum, c, spacing_ghz, occupied_margin_db) for c in every}
    if channels is None:
        reported = every
    else:
        missing = sorted(set(channels) - set(results))
        if missing:
            raise ValueError(f"channels {missing} are not inside the trace")
        reported = sorted(set(channels))
    quantum = set(quantum_channels)
    missing = sorted(quantum - set(results))
    if missing:
        raise ValueError(f"quantum channels {missing} are not inside the trace")
    notches = [
        _notch(spectrum, q, results, step, spacing_ghz, quantum_bandwidth_ghz, quantum)
        for q in sorted(quantum)
    ]
    return Analysis([results[c] for c in reported], notches)


def _channel(
    spectrum: _Spectrum, channel: float, spacing_ghz: int, margin_db: float
) -> ChannelResult:
    centre = channel_thz(channel)
    half = spacing_ghz / 2000
    edge_half_ghz = spacing_ghz / 20
    noise_rbw_mw = (
        spectrum.median_mw(centre - half, edge_half_ghz)
        + spectrum.median_mw(centre + half, edge_half_ghz)
    ) / 2
    band = spectrum.window(centre - half, centre + half)
    peak_index = band.start + int(np.argmax(spectrum.level[band]))
    peak_dbm = float(spectrum.level[peak_index])
    noise_01nm_mw = noise_rbw_mw * REFERENCE_BANDWIDTH_NM / spectrum.rbw_nm
    wavelength = C_NM_THZ / centre
    band_nm = C_NM_THZ / (centre - half) - C_NM_THZ / (centre + half)
    signal_mw = spectrum.integrated_mw(band) - noise_rbw_mw * band_nm / spectrum.rbw_nm
    occupied = peak_dbm - _dbm(noise_rbw_mw) >= margin_db
    has_signal = occupied and signal_mw > 0
    return ChannelResult(
        channel=channel,
        frequency_thz=centre,
        wavelength_nm=wavelength,
        peak_dbm=peak_dbm,
        peak_offset_ghz=float((spectrum.f[peak_index] - centre) * 1000),
        noise_dbm=_dbm(noise_01nm_mw),
        power_dbm=_dbm(signal_mw) if has_signal else None,
        osnr_db=_dbm(signal_mw) - _dbm(noise_01nm_mw) if has_signal else None,
        occupied=occupied,
    )


def _notch(
    spectrum: _Spectrum,
    channel: float,
    results: dict[float, ChannelResult],
    step: float,
    spacing_ghz: int,
    bandwidth_ghz: float,
    quantum: set[float],
) -> NotchResult:
    centre = channel_thz(channel)
    half = bandwidth_ghz / 2000
    level_mw = spectrum.median_mw(centre, bandwidth_ghz / 2)
    in_band_mw = spectrum.integrated_mw(spectrum.window(centre - half, centre + half))
    references = []
    for direction in (-1, 1):
        neighbour = channel
        while neighbour in quantum:  # step out of the group of quantum channels
            neighbour = round(neighbour + direction * step, 1)
        for _ in range(NEIGHBOUR_SEARCH):
            result = results.get(neighbour)
            if result is None:
                break
            if not result.occupied:
                references.append(spectrum.median_mw(result.frequency_thz, spacing_ghz / 4))
                break
            neighbour = round(neighbour + direction * step, 1)
    reference = _dbm(float(np.mean(references))) if references else None
    level = _dbm(level_mw)
    return NotchResult(
        channel=channel,
        frequency_thz=centre,
        wavelength_nm=C_NM_THZ / centre,
        level_dbm=level,
        reference_dbm=reference,
        depth_db=reference - level if reference is not None else None,
        in_band_noise_dbm=_dbm(in_band_mw),
    )

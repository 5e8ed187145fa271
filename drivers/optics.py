"""Optical constants and the ITU-T G.694.1 DWDM grid, in one place for drivers and simulators.

Channel N of the grid is centred at 190.0 + 0.1 N THz (the numbering MadQCI's documents and
the vendors' MIBs use: channel 34 = 193.4 THz = 1550.12 nm); on the 50 GHz grid N may be a half
(34.5). The grid is defined in frequency, so wavelengths here are in vacuum.
"""

from __future__ import annotations

SPEED_OF_LIGHT_M_S = 299_792_458.0
"""Speed of light in vacuum (exact, SI)."""

C_NM_THZ = SPEED_OF_LIGHT_M_S / 1000
"""The speed of light in nm x THz: wavelength_nm = C_NM_THZ / frequency_thz, and back."""

GRID_ORIGIN_THZ = 190.0
"""Frequency of channel 0 of the grid's numbering."""


def channel_thz(channel: float) -> float:
    """Centre frequency of ITU channel `channel` (N or N.5)."""
    return GRID_ORIGIN_THZ + 0.1 * channel


def channel_nm(channel: float) -> float:
    """Centre (vacuum) wavelength of ITU channel `channel`."""
    return C_NM_THZ / channel_thz(channel)


def channel_label(channel: float) -> str:
    """`34` -> "34", `34.5` -> "34.5" (the `channel` tag)."""
    return f"{channel:g}"


def grid_step(spacing_ghz: int) -> float:
    """Channel-number step of a grid: 1 on the 100 GHz grid, 0.5 on the 50 GHz grid."""
    if spacing_ghz not in (100, 50):
        raise ValueError(f"grid spacing is 100 or 50 GHz, not {spacing_ghz}")
    return spacing_ghz / 100


def on_grid(channel: float, spacing_ghz: int) -> bool:
    """Whether `channel` is a channel number of that grid."""
    step = grid_step(spacing_ghz)
    return abs(channel / step - round(channel / step)) < 1e-9

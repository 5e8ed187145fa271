"""The report's time-series figures: one panel per link (or per node), series over time beside
their published means, the moments faults were injected marked on every panel.

Drawn like `qkdtel.lab_plots` (the spectrum and OTDR figures the report reuses): matplotlib's
object API on an Agg canvas, never pyplot, so no GUI backend is chosen and no figure state
survives a call. matplotlib is in the `sims` extra.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
COLUMNS = 3
PANEL_IN = (5.2, 2.8)


@dataclass(frozen=True)
class Series:
    """One line of a panel: values over time (NaN: nothing arrived then, drawn as a gap), and
    the published long-run mean drawn beside it as a dashed line of the same colour."""

    label: str
    times_ns: np.ndarray
    values: np.ndarray
    published: float | None = None


@dataclass(frozen=True)
class Panel:
    """One link's (or node's) axes."""

    title: str
    ylabel: str
    series: tuple[Series, ...]
    log: bool = False
    """Logarithmic y: a link's channels may differ by orders of magnitude (link 5: CV 0.09,
    DV 1040 kbit/s)."""


@dataclass(frozen=True)
class Marker:
    """A moment marked on every panel (an injected fault)."""

    at_ns: int
    label: str


def plot_panels(
    panels: Sequence[Panel],
    path: str | Path,
    *,
    title: str,
    start_ns: int,
    end_ns: int,
    markers: Sequence[Marker] = (),
) -> Path:
    """A grid of panels, `COLUMNS` wide, x in minutes from `start_ns` to `end_ns` (wall clock,
    the same on every panel so that a fault's moment lines up across them)."""
    if not panels:
        raise ValueError("no panel to draw")
    rows = math.ceil(len(panels) / COLUMNS)
    columns = min(COLUMNS, len(panels))
    height = PANEL_IN[1] * rows + 0.6
    figure = Figure(figsize=(PANEL_IN[0] * columns, height))
    # fixed margins, not a layout engine: constrained layout measured every tick label of the
    # grid and took most of the report's time
    axes = figure.subplots(
        rows,
        columns,
        squeeze=False,
        gridspec_kw={
            "left": 0.6 / (PANEL_IN[0] * columns),
            "right": 0.99,
            "top": 1 - (0.6 + 0.2 * len(markers)) / height,
            "bottom": 0.5 / height,
            "hspace": 0.5,
            "wspace": 0.25,
        },
    ).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        _draw_panel(ax, panel, start_ns, markers)
        ax.set_xlim(0, (end_ns - start_ns) / 60e9)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    began = datetime.fromtimestamp(start_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    marked = "".join(f"\nred line: {m.label}" for m in markers)
    figure.suptitle(f"{title} (from {began}){marked}", fontsize=11)
    path = Path(path)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path


def _draw_panel(ax, panel: Panel, start_ns: int, markers: Sequence[Marker]) -> None:
    """The panel's series (solid), their published means (dashed), the markers (red)."""
    colours = iter(f"C{i % 10}" for i in range(len(panel.series)))
    for series in panel.series:
        colour = next(colours)
        minutes = (series.times_ns - start_ns) / 60e9
        values = np.where(series.values > 0, series.values, np.nan) if panel.log else series.values
        # markers too: a series of one bucket (or islands between gaps) has no line to draw
        ax.plot(minutes, values, color=colour, lw=1.0, marker=".", ms=3, label=series.label)
        if series.published is not None:
            ax.axhline(series.published, color=colour, lw=0.8, ls="--", alpha=0.8)
    for marker in markers:
        ax.axvline((marker.at_ns - start_ns) / 60e9, color="red", lw=1.2, alpha=0.7)
    if panel.log:
        ax.set_yscale("log")
    ax.set_title(panel.title, fontsize=9)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.set_xlabel("minutes since start", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(color="0.92")
    ax.legend(fontsize=6, loc="best")

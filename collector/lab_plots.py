"""PNG plots of bench measurements: an OSA sweep on the ITU grid, an OTDR trace and its events.

Drawn with matplotlib's object API on an Agg canvas (`Figure` + `FigureCanvasAgg`), never
pyplot: no GUI backend is chosen or needed, no global figure state survives a call, and the
collector never imports matplotlib (only the bench commands do, lazily).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qkdtel.drivers.optics import C_NM_THZ, channel_label, channel_nm
from qkdtel.drivers.osa.analysis import grid_channels
from qkdtel.drivers.otdr.trace import EventType
from qkdtel.lab import Alarm, ItuReport, OtdrTrace, Sweep

SIZE_IN = (12.0, 6.0)
DPI = 100

_EVENT_STYLE = {
    EventType.REFLECTIVE: ("tab:red", "^", "reflective event"),
    EventType.NON_REFLECTIVE: ("tab:orange", "v", "non-reflective event"),
    EventType.END: ("black", "s", "fibre end"),
}


def _stamp(figure: Figure, instrument: str, taken_ns: int) -> None:
    """Which instrument, and when (UTC): a plot sent on by mail must still say where it came
    from."""
    when = datetime.fromtimestamp(taken_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    figure.suptitle(
        f"{instrument or 'unidentified instrument'} — {when}", fontsize=8, ha="left", x=0.01
    )


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path


def plot_spectrum(sweep: Sweep, report: ItuReport, path: str | Path) -> Path:
    """The trace against wavelength with every grid channel's centre marked and numbered (top
    axis), the occupied classical channels' peaks marked, the quantum channels' bands shaded."""
    trace = sweep.trace
    figure = Figure(figsize=SIZE_IN, layout="constrained")
    ax = figure.add_subplot()
    ax.plot(trace.wavelength_nm, trace.power_dbm, color="tab:blue", lw=0.8, label="spectrum")

    grid = grid_channels(trace, report.grid_ghz)
    centres = [channel_nm(c) for c in grid]
    for centre in centres:
        ax.axvline(centre, color="0.85", lw=0.6, zorder=0)
    # numbers on whole channels only (the 50 GHz grid's N.5 would crowd the axis), <= ~50
    numbered = [c for c in grid if float(c).is_integer()]
    numbered = numbered[:: max(1, -(-len(numbered) // 50))]
    top = ax.secondary_xaxis("top")
    top.set_xticks(
        [channel_nm(c) for c in numbered],
        [channel_label(c) for c in numbered],
        fontsize=7,
    )
    top.set_xlabel(f"ITU-T G.694.1 channel ({report.grid_ghz} GHz grid)")

    classical = report.classical
    if classical:
        peaks_nm = [C_NM_THZ / (c.frequency_thz + c.peak_offset_ghz / 1000) for c in classical]
        ax.plot(
            peaks_nm,
            [c.peak_dbm for c in classical],
            "v",
            color="tab:green",
            label="occupied classical channel (peak)",
        )
        for channel, x in zip(classical, peaks_nm, strict=True):
            if channel.osnr_db is not None:  # vertical: neighbouring channels are 0.8 nm apart
                ax.annotate(
                    f"OSNR {channel.osnr_db:.1f} dB",
                    (x, channel.peak_dbm),
                    xytext=(0, 8),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    rotation=90,
                    fontsize=7,
                )

    half_thz = report.quantum_bandwidth_ghz / 2000
    for index, notch in enumerate(report.notches):
        low = C_NM_THZ / (notch.frequency_thz + half_thz)
        high = C_NM_THZ / (notch.frequency_thz - half_thz)
        ax.axvspan(
            low,
            high,
            color="tab:purple",
            alpha=0.25,
            label=f"quantum channel band (±{report.quantum_bandwidth_ghz / 2:g} GHz)"
            if index == 0
            else None,
        )
        depth = "" if notch.depth_db is None else f"notch {notch.depth_db:.1f} dB, "
        ax.annotate(
            f"{depth}{notch.in_band_noise_dbm:.1f} dBm in band",
            (notch.wavelength_nm, notch.level_dbm),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            va="bottom",
            rotation=90,
            fontsize=7,
            color="tab:purple",
        )

    ax.set_xlim(trace.wavelength_nm[0], trace.wavelength_nm[-1])
    low, high = float(np.min(trace.power_dbm)), float(np.max(trace.power_dbm))
    ax.set_ylim(low - 5, high + 22)  # room for the labels above the peaks
    ax.set_xlabel("wavelength (nm, vacuum)")
    ax.set_ylabel(f"level (dBm per {trace.resolution_nm:g} nm RBW)")
    ax.set_title(
        f"{sweep.identity or 'OSA'}: {trace.wavelength_nm[0]:.2f}-{trace.wavelength_nm[-1]:.2f} "
        f"nm, RBW {trace.resolution_nm:g} nm, {len(trace.wavelength_nm)} points",
        fontsize=10,
    )
    ax.grid(axis="y", color="0.9")
    figure.legend(loc="outside lower center", ncols=3, fontsize=8)
    _stamp(figure, sweep.identity, sweep.taken_ns)
    return _save(figure, path)


def plot_otdr(
    trace: OtdrTrace,
    path: str | Path,
    baseline: OtdrTrace | None = None,
    *,
    instrument: str,
    taken_ns: int,
    alarms: Sequence[Alarm] = (),
) -> Path:
    """The trace against distance, each event marked and numbered as in the event table, the
    baseline (when given) underneath for comparison, each baseline alarm marked in red where
    it is (or in the title when it has no place, a total loss change)."""
    figure = Figure(figsize=SIZE_IN, layout="constrained")
    ax = figure.add_subplot()

    def km(samples: OtdrTrace) -> np.ndarray:
        return (samples.offset_m + np.arange(samples.points) * samples.spacing_m) / 1000

    if baseline is not None:
        # on top, dashed: where nothing changed it dashes the trace, where it did it stands out
        ax.plot(
            km(baseline),
            baseline.values_db,
            color="0.3",
            lw=0.8,
            ls="--",
            zorder=3,
            label="baseline",
        )
    distance = km(trace)
    ax.plot(distance, trace.values_db, color="tab:blue", lw=0.8, label=f"{trace.wavelength_nm} nm")

    labelled: set[EventType] = set()
    for number, event in enumerate(trace.events, start=1):
        colour, marker, name = _EVENT_STYLE[event.type]
        x = event.distance_m / 1000
        index = int(np.clip(np.searchsorted(distance, x), 0, trace.points - 1))
        y = float(trace.values_db[index])
        ax.axvline(x, color=colour, lw=0.6, alpha=0.5)
        ax.plot([x], [y], marker, color=colour, label=None if event.type in labelled else name)
        labelled.add(event.type)
        ax.annotate(
            str(number),
            (x, y),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color=colour,
        )

    _mark_alarms(ax, alarms)
    length = (
        "no end seen"
        if trace.fibre_length_m is None
        else f"fibre length {trace.fibre_length_m / 1000:.3f} km"
    )
    loss = "" if trace.total_loss_db is None else f", total loss {trace.total_loss_db:.2f} dB"
    placeless = [a.kind for a in alarms if a.distance_m is None]
    raised = f"\nALARM: {', '.join(placeless)}" if placeless else ""
    ax.set_title(
        f"OTDR {trace.wavelength_nm} nm, {trace.pulse_width_ns:g} ns pulse: {length}{loss}{raised}",
        fontsize=10,
        color="tab:red" if alarms else "black",
    )
    ax.set_xlabel("distance (km)")
    ax.set_ylabel("backscatter level (dB, 5 log)")
    ax.set_xlim(distance[0], distance[-1])
    ax.grid(color="0.9")
    figure.legend(loc="outside lower center", ncols=6, fontsize=8)
    _stamp(figure, instrument, taken_ns)
    return _save(figure, path)


def _mark_alarms(ax: Axes, alarms: Sequence[Alarm]) -> None:
    """A red band and the alarm's kind at each alarm that has a distance."""
    placed = [a for a in alarms if a.distance_m is not None]
    for index, alarm in enumerate(placed):
        x = alarm.distance_m / 1000
        ax.axvline(
            x, color="red", lw=2.5, alpha=0.6, label="baseline alarm" if index == 0 else None
        )
        ax.annotate(
            alarm.kind.replace("_", " "),
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -4),
            textcoords="offset points",
            rotation=90,
            va="top",
            fontsize=8,
            color="red",
        )

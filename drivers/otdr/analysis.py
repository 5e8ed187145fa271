"""Event detection on an OTDR trace: the analysis an instrument's firmware runs after an
acquisition, done here too so traces of any source (our simulator's firmware, a SOR file from a
commissioning technician that has no event table) get the same event table.

How it works, in the terms OTDR manuals use:
- the noise floor is the tail of the trace past the far end (none when the fibre is longer
  than the range: then there is no end event);
- reflective events are spikes above a rolling median of the backscatter;
- non-reflective events are steps: at every sample a straight line is fitted to the
  backscatter just before and just after (two-point least-squares windows, leaving out the
  pulse-long ramp of a step), and the gap between the two lines at that point is the loss;
- once events are placed, each fibre section between two events gets its own least-squares
  line, and an event's loss is the gap between the lines on either side of it (the LSA method,
  which averages the noise away); a reflective event's reflectance follows from its height
  over the backscatter and the backscatter coefficient;
- the total loss is the fall of those lines from 0 m to the far end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from qkdtel.drivers.otdr.trace import EventType, OtdrEvent, OtdrTrace

DEFAULT_LOSS_THRESHOLD_DB = 0.05
DEFAULT_END_THRESHOLD_DB = 3.0
SPIKE_THRESHOLD_DB = 0.3
"""A reflective event rises at least this far over the backscatter (about -65 dB reflectance
for a 1 us pulse at 1550 nm); weaker ones are indistinguishable from noise on a long fibre."""


@dataclass(frozen=True)
class _Spike:
    start: int
    stop: int  # exclusive: first sample back on the backscatter


class _Fits:
    """Least-squares lines over any window [a, b) of the trace in O(1), from prefix sums."""

    def __init__(self, y: np.ndarray):
        x = np.arange(y.size, dtype=np.float64)
        self._n = np.arange(y.size + 1, dtype=np.float64)
        self._sx = np.concatenate(([0.0], np.cumsum(x)))
        self._sy = np.concatenate(([0.0], np.cumsum(y)))
        self._sxx = np.concatenate(([0.0], np.cumsum(x * x)))
        self._sxy = np.concatenate(([0.0], np.cumsum(x * y)))

    def at(self, a: np.ndarray | int, b: np.ndarray | int, p: np.ndarray | float) -> np.ndarray:
        """Value at position `p` of the line fitted to samples [a, b) (b - a >= 2)."""
        n = self._n[b] - self._n[a]
        sx = self._sx[b] - self._sx[a]
        sy = self._sy[b] - self._sy[a]
        sxx = self._sxx[b] - self._sxx[a]
        sxy = self._sxy[b] - self._sxy[a]
        mx, my = sx / n, sy / n
        slope = (sxy - n * mx * my) / (sxx - n * mx * mx)
        return my + slope * (p - mx)


def _runs(mask: np.ndarray, bridge: int = 0) -> list[tuple[int, int]]:
    """[start, stop) of the runs of True in `mask`, runs closer than `bridge` samples merged."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    runs: list[tuple[int, int]] = []
    for start, stop in zip(edges[::2], edges[1::2], strict=True):
        if runs and start - runs[-1][1] <= bridge:
            runs[-1] = (runs[-1][0], int(stop))
        else:
            runs.append((int(start), int(stop)))
    return runs


def _noise_start(y: np.ndarray, smooth_over: int, end_threshold_db: float) -> int | None:
    """First sample of the noise after the far end, or None if the trace ends on backscatter.

    Noise is told from backscatter by its jitter: consecutive samples of backscatter differ by
    hundredths of a dB, noise samples by dBs. The signal ends where the trace, smoothed over a
    pulse, last stands clear (end threshold) of everything the noise reaches.
    """
    tail = y[-max(64, y.size // 20) :]
    if np.std(np.diff(tail)) < 0.5:
        return None
    width = max(3, min(smooth_over, tail.size // 4))
    kernel = np.ones(width) / width
    smooth = np.convolve(y, kernel, mode="same")
    ceiling = float(np.max(smooth[-tail.size + kernel.size :]))
    signal = np.flatnonzero(smooth > ceiling + end_threshold_db)
    return int(signal[-1]) + 1 if signal.size else 0


def _local_noise(y: np.ndarray, block: int) -> np.ndarray:
    """Standard deviation of the noise on each sample, from the median jump between
    neighbours over blocks of `block` samples (robust to the few big jumps at events)."""
    jumps = np.abs(np.diff(y, append=y[-1]))
    blocks = -(-y.size // block)
    padded = np.pad(jumps, (0, blocks * block - y.size), mode="edge").reshape(blocks, block)
    sigma = np.median(padded, axis=1) / (0.6745 * math.sqrt(2.0))
    return np.repeat(sigma, block)[: y.size]


def _rises(y: np.ndarray, stop: int, edge: int, threshold: np.ndarray) -> list[int]:
    """Leading edges of reflections before `stop`: the mean of `edge` samples from i on
    exceeds the mean of the `edge` samples before i by `threshold[i]` dB. Backscatter only ever
    falls (or rises slowly over a pulse at a gainer), so a sharp rise is a reflection."""
    total = np.concatenate(([0.0], np.cumsum(y)))
    i = np.arange(edge, max(edge, stop - edge))
    rise = (total[i + edge] - total[i]) / edge - (total[i] - total[i - edge]) / edge
    above = np.zeros(y.size, dtype=bool)
    above[i[rise > threshold[i]]] = True
    value = np.full(y.size, -np.inf)
    value[i] = rise
    return [a + int(np.argmax(value[a:b])) for a, b in _runs(above, bridge=edge)]


def analyse(
    trace: OtdrTrace,
    loss_threshold_db: float = DEFAULT_LOSS_THRESHOLD_DB,
    end_threshold_db: float = DEFAULT_END_THRESHOLD_DB,
) -> OtdrTrace:
    """`trace` with its event table, fibre length and total loss filled in by our analysis."""
    y = trace.values_db
    n = y.size
    w = max(1, round(trace.pulse_length_m / trace.spacing_m))
    gap = max(2, w // 2)
    window = min(max(4 * w, 24), 4000)

    dead = 3 * w  # a spike, and the receiver's recovery from it (attenuation dead zone)
    noise_at = _noise_start(y, w, end_threshold_db)
    stop = n if noise_at is None else noise_at
    edge = max(1, min(w // 10, 8))
    # Thresholds rise with the noise, so a fibre sinking into it yields no phantom events.
    sigma = _local_noise(y, max(64, w))
    rise_threshold = np.maximum(SPIKE_THRESHOLD_DB, 6.0 * sigma * math.sqrt(2.0 / edge))
    spikes = [_Spike(i, i + dead) for i in _rises(y, stop, edge, rise_threshold)]
    spikes = [sp for sp in spikes if sp.start > dead]  # within the launch dead zone: unseen
    launch_end = dead
    fits = _Fits(y)

    # The far end: the last spike reaching into the noise, or the fall into it.
    end_index: int | None = None
    end_reflective = False
    if noise_at is not None:
        if spikes and spikes[-1].start + 2 * dead >= noise_at:
            end_index, end_reflective = spikes.pop().start, True
        else:
            end_index = max(launch_end, noise_at - w)
    usable_stop = end_index if end_index is not None else n

    # Samples no fit window may include: launch, spikes and their recovery, past the end.
    dirty = np.zeros(n + 1, dtype=np.int64)
    dirty[: launch_end + 1] = 1
    for spike in spikes:
        dirty[max(0, spike.start - gap) : spike.stop] = 1
    dirty[max(0, usable_stop - gap) :] = 1
    dirty_sum = np.concatenate(([0], np.cumsum(dirty[:n])))

    # Steps: two-sided fits at every sample.
    candidates: list[tuple[int, float]] = []
    i = np.arange(n)
    a1, b1 = i - gap - window, i - gap
    a2, b2 = i + w + gap, i + w + gap + window
    ok = (a1 >= 0) & (b2 <= n)
    idx = i[ok]
    clean = (dirty_sum[b1[ok]] - dirty_sum[a1[ok]] == 0) & (
        dirty_sum[b2[ok]] - dirty_sum[a2[ok]] == 0
    )
    idx = idx[clean]
    if idx.size:
        delta = fits.at(idx - gap - window, idx - gap, idx) - fits.at(
            idx + w + gap, idx + w + gap + window, idx
        )
        # each fitted line is off by about 2 sigma / sqrt(window) at its end
        step_threshold = np.maximum(loss_threshold_db, 8.0 * sigma[idx] / math.sqrt(window))
        above = np.zeros(n, dtype=bool)
        above[idx[delta > step_threshold]] = True
        value = np.full(n, -np.inf)
        value[idx] = delta
        for a, b in _runs(above, bridge=1):
            best = a + int(np.argmax(value[a:b]))
            candidates.append((best, float(value[best])))

    # Place each step where its ramp starts: the ramp's midpoint is where the trace has fallen
    # half the step below the line before it; the step starts half a pulse earlier.
    steps: list[int] = []
    for best, loss in candidates:
        lo = max(best - gap - w, 0)
        line = fits.at(best - gap - window, best - gap, np.arange(lo, best + gap + w))
        below = np.flatnonzero(y[lo : best + gap + w] < line - loss / 2)
        mid = lo + int(below[0]) if below.size else best + w // 2
        steps.append(max(mid - w // 2, launch_end))

    # Sections between events, each with its own least-squares line.
    placed = sorted(
        [(s, EventType.NON_REFLECTIVE, None) for s in steps]
        + [(sp.start, EventType.REFLECTIVE, sp) for sp in spikes],
        key=lambda e: e[0],
    )
    bounds: list[tuple[int, int]] = []  # clean samples before each event, and after the last
    start = launch_end + gap
    for position, _kind, spike in placed:
        bounds.append((start, position - gap))
        start = (spike.stop if spike else position + w) + gap
    bounds.append((start, usable_stop - gap))

    def line(section: int, position: float) -> float | None:
        a, b = bounds[section]
        if b - a < 8:
            return None
        return float(fits.at(a, b, position))

    origin = line(0, 0.0)
    events: list[OtdrEvent] = []
    for k, (position, kind, spike) in enumerate(placed):
        before, after = line(k, position), line(k + 1, position)
        loss = None if before is None or after is None else round(before - after, 3)
        reflectance = None
        if spike is not None and before is not None:
            reflectance = _reflectance(trace, float(np.max(y[spike.start : spike.stop])) - before)
        cumulative = None if origin is None or after is None else round(origin - after, 3)
        events.append(
            OtdrEvent(
                round(trace.offset_m + position * trace.spacing_m, 2),
                kind,
                loss,
                reflectance,
                cumulative,
            )
        )
    # a step the section lines do not confirm was noise on the short two-sided windows
    events = [
        e
        for e in events
        if e.type is EventType.REFLECTIVE
        or (e.loss_db is not None and e.loss_db >= loss_threshold_db / 2)
    ]

    fibre_length = total_loss = None
    if end_index is not None:
        fibre_length = round(trace.offset_m + end_index * trace.spacing_m, 2)
        last = line(len(placed), float(end_index))
        if origin is not None and last is not None:
            total_loss = round(origin - last, 3)
        reflectance = None
        if end_reflective and last is not None:
            height = float(np.max(y[end_index : min(n, end_index + w + 1)])) - last
            reflectance = _reflectance(trace, height)
        events.append(OtdrEvent(fibre_length, EventType.END, None, reflectance, total_loss))
    return replace(
        trace, events=tuple(events), fibre_length_m=fibre_length, total_loss_db=total_loss
    )


def _reflectance(trace: OtdrTrace, height_db: float) -> float | None:
    """Reflectance of a spike `height_db` over the backscatter (5 log dB):
    R = B_1ns + 10 log10(D_ns) + 10 log10(10^(H/5) - 1)."""
    if height_db <= 0:
        return None
    excess = 10.0 ** (height_db / 5.0) - 1.0
    value = trace.backscatter_db + 10.0 * math.log10(trace.pulse_width_ns) + 10 * math.log10(excess)
    return round(value, 2)

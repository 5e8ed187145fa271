"""Commissioning baselines of a link's trace and the comparison that raises alarms.

Why: fibre degradation (a bend, a crushed duct, a dirty or cracked connector) eats a QKD link's
loss budget long before it hurts classical traffic, whose margins are many dB. The OTDR sees it
first, as a change against the trace taken when the link was commissioned. The first
acquisition of a link at a wavelength is kept as its baseline (one JSON file per link and
wavelength in the driver's `baseline_dir`, written atomically, never overwritten by the
driver: delete it to re-commission); every later acquisition is compared with it.

A change becomes an alarm when it is beyond a threshold:
- `new_event`: an event where the baseline has none (matched within a pulse length); alarmed
  when its loss reaches the loss threshold or it is reflective above the reflectance threshold;
- `event_loss_change`: an event present in both whose loss grew (or shrank) by the threshold;
- `missing_event`: a baseline event no longer seen (e.g. past a new break);
- `total_loss_change`: the end-to-end loss changed by the total-loss threshold;
- `fibre_length_change`: the far end moved (a break shortens the fibre).
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qkdtel.drivers.otdr.trace import EventType, OtdrEvent, OtdrTrace

FORMAT = "qkdtel-otdr-baseline/1"


@dataclass(frozen=True)
class Thresholds:
    """When a difference from the baseline is an alarm."""

    loss_db: float = 0.3
    total_loss_db: float = 0.5
    reflectance_db: float = -60.0
    length_m: float = 20.0


@dataclass(frozen=True)
class Alarm:
    """One difference beyond a threshold."""

    kind: str  # new_event, event_loss_change, missing_event, total_loss_change, ...
    message: str
    distance_m: float | None = None
    event: int | None = None  # 1-based index in the current event table (baseline's if missing)
    loss_db: float | None = None  # the current loss (event or total)
    baseline_loss_db: float | None = None
    loss_change_db: float | None = None
    reflectance_db: float | None = None
    length_change_m: float | None = None


def _match(baseline: list[OtdrEvent], event: OtdrEvent, tolerance: float) -> int | None:
    best = None
    for index, candidate in enumerate(baseline):
        gap = abs(candidate.distance_m - event.distance_m)
        if gap <= tolerance and (
            best is None or gap < abs(baseline[best].distance_m - event.distance_m)
        ):
            best = index
    return best


def compare(baseline: OtdrTrace, current: OtdrTrace, thresholds: Thresholds) -> list[Alarm]:
    """The alarms `current` raises against `baseline` (same link and wavelength)."""
    if baseline.wavelength_nm != current.wavelength_nm:
        raise ValueError(
            f"cannot compare a {current.wavelength_nm} nm trace with a "
            f"{baseline.wavelength_nm} nm baseline"
        )
    tolerance = max(current.pulse_length_m, baseline.pulse_length_m, 4 * current.spacing_m, 10.0)
    alarms: list[Alarm] = []
    old = [e for e in baseline.events if e.type is not EventType.END]
    matched: set[int] = set()
    for index, event in enumerate(current.events, start=1):
        if event.type is EventType.END:
            continue
        found = _match(old, event, tolerance)
        if found is None:
            strong = event.loss_db is not None and event.loss_db >= thresholds.loss_db
            bright = (
                event.reflectance_db is not None
                and event.reflectance_db >= thresholds.reflectance_db
            )
            if strong or bright:
                kind = "reflective" if event.reflective else "non-reflective"
                loss = "unknown loss" if event.loss_db is None else f"{event.loss_db:.2f} dB"
                alarms.append(
                    Alarm(
                        "new_event",
                        f"new {kind} event at {event.distance_m:.0f} m ({loss})",
                        event.distance_m,
                        index,
                        event.loss_db,
                        None,
                        event.loss_db,
                        event.reflectance_db,
                    )
                )
            continue
        matched.add(found)
        before = old[found]
        if event.loss_db is None or before.loss_db is None:
            continue
        change = round(event.loss_db - before.loss_db, 3)
        if abs(change) >= thresholds.loss_db:
            alarms.append(
                Alarm(
                    "event_loss_change",
                    f"event at {event.distance_m:.0f} m: loss {before.loss_db:.2f} -> "
                    f"{event.loss_db:.2f} dB",
                    event.distance_m,
                    index,
                    event.loss_db,
                    before.loss_db,
                    change,
                    event.reflectance_db,
                )
            )
    end = current.fibre_length_m if current.fibre_length_m is not None else float("inf")
    for index, before in enumerate(old, start=1):
        if index - 1 in matched:
            continue
        past_end = before.distance_m > end
        if past_end or (before.loss_db is not None and before.loss_db >= thresholds.loss_db):
            where = "past the fibre's end" if past_end else "no longer seen"
            alarms.append(
                Alarm(
                    "missing_event",
                    f"baseline event at {before.distance_m:.0f} m is {where}",
                    before.distance_m,
                    index,
                    baseline_loss_db=before.loss_db,
                )
            )
    if baseline.total_loss_db is not None and current.total_loss_db is not None:
        change = round(current.total_loss_db - baseline.total_loss_db, 3)
        if abs(change) >= thresholds.total_loss_db:
            alarms.append(
                Alarm(
                    "total_loss_change",
                    f"total loss {baseline.total_loss_db:.2f} -> {current.total_loss_db:.2f} dB",
                    loss_db=current.total_loss_db,
                    baseline_loss_db=baseline.total_loss_db,
                    loss_change_db=change,
                )
            )
    if baseline.fibre_length_m is not None and current.fibre_length_m != baseline.fibre_length_m:
        change = (
            None
            if current.fibre_length_m is None
            else current.fibre_length_m - baseline.fibre_length_m
        )
        if change is None or abs(change) >= max(thresholds.length_m, 2 * current.spacing_m):
            seen = "no end seen" if change is None else f"{current.fibre_length_m:.0f} m"
            alarms.append(
                Alarm(
                    "fibre_length_change",
                    f"fibre length {baseline.fibre_length_m:.0f} m -> {seen}",
                    current.fibre_length_m,
                    length_change_m=None if change is None else round(change, 2),
                )
            )
    return alarms


# -- the store --------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


class BaselineStore:
    """Baseline traces on disk: `<dir>/<link>_<wavelength>nm.json`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, link: str, wavelength_nm: int) -> Path:
        return self.directory / f"{_SAFE.sub('_', link)}_{wavelength_nm}nm.json"

    def load(self, link: str, wavelength_nm: int) -> OtdrTrace | None:
        """The baseline, None if there is none; ValueError naming the file if unreadable."""
        path = self.path(link, wavelength_nm)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the baseline: {exc.strerror}") from exc
        try:
            return trace_from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a baseline trace ({exc})") from exc

    def save(self, link: str, trace: OtdrTrace) -> Path:
        """Write the baseline atomically (a crash never leaves half a file)."""
        path = self.path(link, trace.wavelength_nm)
        self.directory.mkdir(parents=True, exist_ok=True)
        document = json.dumps({"link": link, **trace_to_json(trace)}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".baseline-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(document)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def trace_to_json(trace: OtdrTrace) -> dict[str, Any]:
    """A trace as a JSON document (samples as base64 little-endian float32)."""
    return {
        "format": FORMAT,
        "wavelength_nm": trace.wavelength_nm,
        "pulse_width_ns": trace.pulse_width_ns,
        "spacing_m": trace.spacing_m,
        "offset_m": trace.offset_m,
        "group_index": trace.group_index,
        "backscatter_db": trace.backscatter_db,
        "averaging_s": trace.averaging_s,
        "range_m": trace.range_m,
        "fibre_length_m": trace.fibre_length_m,
        "total_loss_db": trace.total_loss_db,
        "events": [
            {
                "distance_m": e.distance_m,
                "type": e.type.value,
                "loss_db": e.loss_db,
                "reflectance_db": e.reflectance_db,
                "cumulative_loss_db": e.cumulative_loss_db,
            }
            for e in trace.events
        ],
        "points": trace.points,
        "values_db": base64.b64encode(trace.values_db.astype("<f4").tobytes()).decode("ascii"),
    }


def trace_from_json(document: dict[str, Any]) -> OtdrTrace:
    """Inverse of `trace_to_json`."""
    if document.get("format") != FORMAT:
        raise ValueError(f"format is {document.get('format')!r}, expected {FORMAT!r}")
    values = np.frombuffer(base64.b64decode(document["values_db"]), dtype="<f4")
    if values.size != document["points"]:
        raise ValueError(f"{values.size} samples, the header says {document['points']}")
    events = tuple(
        OtdrEvent(
            float(e["distance_m"]),
            EventType(e["type"]),
            e["loss_db"],
            e["reflectance_db"],
            e["cumulative_loss_db"],
        )
        for e in document["events"]
    )
    return OtdrTrace(
        values,
        float(document["spacing_m"]),
        int(document["wavelength_nm"]),
        float(document["pulse_width_ns"]),
        offset_m=float(document["offset_m"]),
        group_index=float(document["group_index"]),
        backscatter_db=float(document["backscatter_db"]),
        averaging_s=float(document["averaging_s"]),
        range_m=float(document["range_m"]),
        events=events,
        fibre_length_m=document["fibre_length_m"],
        total_loss_db=document["total_loss_db"],
    )

"""The collector daemon run in a test: its configuration (a spool and a file sink under the
test's tmp_path), a recorder of every spooled sample, and the line protocol the sink wrote."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from qkdtel.sdk import Sample
from qkdtel.sims.influxd import InfluxServer


def collector_document(tmp_path: Path, devices: list[dict], **collector: Any) -> dict[str, Any]:
    """A configuration polling `devices`, spooling under tmp_path/spool and writing to the file
    sink tmp_path/lp; `collector` overrides or adds `collector:` settings."""
    return {
        "collector": {
            "spool_dir": str(tmp_path / "spool"),
            "self_telemetry_interval": 0.5,
            "flush_interval": 0.2,
            **collector,
        },
        "sinks": [{"type": "file", "path": str(tmp_path / "lp")}],
        "devices": devices,
    }


def written(tmp_path: Path) -> str:
    """Every line the file sink of `collector_document` wrote."""
    return "".join(p.read_text() for p in (tmp_path / "lp").rglob("*") if p.is_file())


def store_lines(directory: Path) -> list[str]:
    """The points' lines in a file sink's `directory`, file by file in name order, without the
    `# DML` / `# CONTEXT-DATABASE` header each file starts with."""
    return [
        line
        for path in sorted(directory.rglob("*"))
        if path.is_file()
        for line in path.read_text().splitlines()
        if not line.startswith("#")
    ]


class Recorder:
    """Observer keeping every spooled sample."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def __call__(self, samples: list[Sample]) -> None:
        self.samples.extend(samples)

    def statuses(self) -> dict[str, list[Sample]]:
        """The `qkdtel_device_status` samples by device (none: an empty list)."""
        out: dict[str, list[Sample]] = defaultdict(list)
        for s in self.samples:
            if s.measurement == "qkdtel_device_status":
                out[s.tags["device"]].append(s)
        return out


def polled_by_one_scheduler(polls: list[float], interval: float) -> bool:
    """Whether `polls` (sorted times) fit one schedule at `interval`: each poll takes a slot of
    its own, late by up to an interval (coalesced, never made up), so n polls span at least
    (n - 1) slots less one interval. Two collectors polling the device put about twice as many
    polls in the span. Counted, not gap-checked: a late poll followed by one on time is a gap
    far shorter than the interval, from one scheduler."""
    span = polls[-1] - polls[0]
    return len(polls) <= span / interval + 2


def poll_times(influxdb: InfluxServer, db: str) -> dict[str, list[float]]:
    """Device -> the times (s) of its polls, from the qkdtel_device_status points."""
    rows = influxdb.query('SELECT "up" FROM "qkdtel_device_status" GROUP BY "device"', db)
    times: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        times[row["device"]].append(row["time"] / 1e9)
    return {device: sorted(t) for device, t in times.items()}

"""Render samples for people and pipes: a table, JSON lines, or InfluxDB line protocol."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from qkdtel.sample import encode_lines
from qkdtel.sdk import Sample

FORMATS = ("table", "json", "line")


def _timestamp(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).isoformat(timespec="milliseconds")


def _value(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def samples_table(samples: Iterable[Sample]) -> Table:
    """One row per sample: measurement, tags and fields, sorted as the driver produced them."""
    table = Table(show_lines=False, header_style="bold")
    for column in ("measurement", "tags", "fields", "time (UTC)"):
        table.add_column(column, overflow="fold")
    for s in samples:
        tags = " ".join(f"{k}={v}" for k, v in sorted(s.tags.items()))
        fields = " ".join(f"{k}={_value(v)}" for k, v in s.fields.items())
        table.add_row(s.measurement, tags, fields, _timestamp(s.time_ns))
    return table


def print_samples(samples: list[Sample], fmt: str, console: Console) -> None:
    """Write samples to the console in the chosen format."""
    if fmt == "table":
        console.print(samples_table(samples))
    elif fmt == "json":
        for s in samples:
            record = {
                "measurement": s.measurement,
                "tags": dict(s.tags),
                "fields": dict(s.fields),
                "time_ns": s.time_ns,
            }
            console.out(json.dumps(record, ensure_ascii=False), highlight=False)
    elif fmt == "line":
        for line in encode_lines(samples):
            console.out(line, highlight=False)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")

"""Render samples for people and pipes: a table, JSON lines, or InfluxDB line protocol."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Console, RenderableType
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


UNSQUEEZED_MAX = 100_000
"""Widest line a renderable is given when the output is not a terminal (a pipe, a file)."""


def print_unsqueezed(console: Console, renderable: RenderableType) -> None:
    """Print `renderable` at a terminal's width, or, into a pipe or file, at its own natural
    width: rich would otherwise squeeze it to 80 columns there, folding resource strings and
    field names (`grep` and `less -S` need them whole)."""
    if console.is_terminal:
        console.print(renderable)
        return
    wide = console.options.update_width(UNSQUEEZED_MAX)
    natural = console.measure(renderable, options=wide).maximum
    width = console.width  # print(width=) cannot widen past the console's own width
    console.width = max(width, natural)
    try:
        console.print(renderable, crop=False)
    finally:
        console.width = width


def print_samples(samples: list[Sample], fmt: str, console: Console) -> None:
    """Write samples to the console in the chosen format."""
    if fmt == "table":
        print_unsqueezed(console, samples_table(samples))
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

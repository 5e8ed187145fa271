"""The one unit of data that flows from drivers to sinks.

A driver turns one poll into a list of `Sample`s; the collector adds the device's configured
tags, encodes them as InfluxDB line protocol and spools them. Field and measurement names must
be those of docs/metrics.md (tests enforce it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

FieldValue = float | int | bool | str

# Line-protocol escaping as InfluxDB's parser undoes it. Only `,`, `=` and space are escaped in
# keys and tag values (and `,` and space in measurement names); tabs, carriage returns and any
# other character are stored as they are. A newline cannot be stored in a key or tag value (it
# ends the line): it is written as the two characters `\n`, as every client library does, so it
# cannot split the line into two points. A backslash is left alone: InfluxDB has no way to store
# one right before `,`, `=`, space or at the end of a key or tag value, and leaving it unescaped
# makes such a line fail to parse (the write is rejected and reported) instead of being stored
# with an altered value.
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
# Field keys alone also have `"` unescaped by InfluxDB: `\"` in a field key would lose its
# backslash unless the quote is escaped too.
_FIELD_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", '"': r"\""})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": r"\\"})


@lru_cache(maxsize=65536)
def _escape_key(text: str) -> str:
    """Escape a tag key or tag value; cached since the same few names recur."""
    return str(text).translate(_KEY_ESCAPES)


@lru_cache(maxsize=4096)
def _escape_field_key(text: str) -> str:
    return str(text).translate(_FIELD_KEY_ESCAPES)


def _field_value(value: FieldValue) -> str | None:
    """Encode one field value; None for a value InfluxDB cannot store (NaN, infinities)."""
    kind = type(value)
    if kind is float:
        return repr(value) if math.isfinite(value) else None
    if kind is str:
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return f"{value}i"
    # Subclasses (IntEnum, numpy scalars...) take the slower path.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{int(value)}i"
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        return '"' + str(value).translate(_STRING_ESCAPES) + '"'
    raise TypeError(f"field value of type {kind.__name__} is not supported")


def now_ns() -> int:
    """Wall-clock time in nanoseconds, the precision every sample is stored at."""
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class Sample:
    """One point: a measurement, its tags and fields at one instant.

    The timestamp is always explicit: replaying a spooled point after a crash then rewrites the
    same series and timestamp, which InfluxDB treats as the same point (no duplicates).
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int = field(default_factory=now_ns)

    def with_default_tags(self, defaults: Mapping[str, str]) -> Sample:
        """Fill in tags the driver did not set (the driver's own per-row tags win)."""
        if not defaults:
            return self
        merged = dict(defaults)
        merged.update(self.tags)
        return Sample(self.measurement, merged, self.fields, self.time_ns)

    def to_line(self) -> str:
        """Encode as one line of InfluxDB line protocol (nanosecond precision).

        Tags are sorted (InfluxDB's preferred order), empty tag keys and values are left out (a
        tag cannot be empty). Returns "" when no field can be stored (all NaN or infinite),
        since a point without fields does not exist in InfluxDB.

        Hand-written rather than `influxdb_client.Point`: Point turns tabs and carriage returns in
        tag values into the literal characters `\\t` / `\\r` and appends a space to a trailing
        backslash, all of which InfluxDB then stores as an altered value; and it takes three to four
        times as long on the collector's hot path.
        """
        tags = "".join(
            [
                f",{_escape_key(k)}={_escape_key(v)}"
                for k, v in sorted(self.tags.items())
                if k != "" and v != ""
            ]
        )
        fields = []
        for key, value in self.fields.items():
            encoded = _field_value(value)
            if encoded is not None:
                fields.append(f"{_escape_field_key(key)}={encoded}")
        if not fields:
            return ""
        if fields[0][0] in "\t\0":
            # InfluxDB skips tabs and NULs before the first field: lead with another field.
            fields.sort(key=lambda f: f[0] in "\t\0")
        measurement = self.measurement.translate(_MEASUREMENT_ESCAPES)
        return f"{measurement}{tags} {','.join(fields)} {self.time_ns}"

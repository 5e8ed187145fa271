"""InfluxDB line protocol of `Sample`s (the SDK's unit of data, `qkdtel.sdk.Sample`).

The collector adds a device's configured tags to what its driver returns, encodes it here and
spools the lines. Hand-written rather than `influxdb_client.Point`: Point turns tabs and carriage
returns in tag values into the literal characters `\\t` / `\\r` and appends a space to a
trailing backslash, all of which InfluxDB then stores as an altered value; and it takes three to
four times as long on the collector's hot path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import lru_cache

from qkdtel.sdk import FieldValue, Sample

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


@lru_cache(maxsize=65536, typed=True)
def _escape_key(text: str) -> str:
    """Escape a tag key or tag value; cached since the same few names recur."""
    return str(text).translate(_KEY_ESCAPES)


@lru_cache(maxsize=4096, typed=True)
def _escape_field_key(text: str) -> str:
    return str(text).translate(_FIELD_KEY_ESCAPES)


def _field_value(value: FieldValue) -> str | None:
    """Encode a field value of a subclass of bool, int, float or str (IntEnum, numpy scalars...);
    None for a value InfluxDB cannot store (NaN, infinities). `_fields_text` writes the exact
    built-in types itself."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{int(value)}i"
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        return '"' + str(value).translate(_STRING_ESCAPES) + '"'
    raise TypeError(f"field value of type {type(value).__name__} is not supported")


# The encoder: a plain loop over the fields, with two caches because a collector writes the same
# series and field keys again and again: the escaped `measurement,tags ` head of a line per
# (measurement, tags), and the escaped `key=` per field key. Each cache is emptied when it reaches
# its bound: a collector with more series than that only loses the speed-up, never correctness.
# Only text keys and values are cached: 1, 1.0 and True are equal as dict keys, yet are written
# "1", "1.0" and "True".
#
# Decision (issue 14): an encoder that exec-generated one f-string function per field shape was
# tried and removed. At the capacity target (issue 12: 1,000 polls/s, up to ~30,000 points/s) on
# this 2-vCPU VM, 200,000 qkd_link points of 6 fields (bench/delivery.py's samples), best of 5:
# generated 4.0 us/point, this loop 5.1 us/point with the machine loaded (load 4), i.e. 12 % and
# 15 % of a core at 30,000 points/s; quiet, the generated one measured 2.0 us (6 %), so this one
# should take ~2.6 us (~8 %) by the same ratio. Polling those 1,000 devices/s costs ~57 % of a
# core (bench/README.md), so the generated code saved ~3 % of a core for ~70 lines of code
# generation, a cache of compiled functions and a second path to keep equal to this one.
# `python bench/delivery.py --encoder` prints this loop's figure.
_SERIES_CACHE_MAX = 65536
_FIELD_KEY_CACHE_MAX = 4096
_BOOL_TEXT = ("false", "true")

_series_heads: dict[tuple[object, ...], str] = {}
_field_heads: dict[str, str] = {}


def _series_head(measurement: str, tags: Mapping[str, str]) -> str:
    """`measurement,k=v,... ` (escaped, tags sorted, empty keys and values left out)."""
    tag_set = "".join(
        [
            f",{_escape_key(k)}={_escape_key(v)}"
            for k, v in sorted(tags.items())
            if k != "" and v != ""
        ]
    )
    head = f"{measurement.translate(_MEASUREMENT_ESCAPES)}{tag_set} "
    if type(measurement) is str and all(type(k) is str and type(v) is str for k, v in tags.items()):
        if len(_series_heads) >= _SERIES_CACHE_MAX:
            _series_heads.clear()
        # Flat (measurement, keys..., values...): quicker to build and hash than a tuple of
        # pairs, and unambiguous since there are as many keys as values.
        _series_heads[(measurement, *tags, *tags.values())] = head
    return head


def _field_head(key: str) -> str:
    """`key=` (escaped)."""
    head = _escape_field_key(key) + "="
    if type(key) is str:
        if len(_field_heads) >= _FIELD_KEY_CACHE_MAX:
            _field_heads.clear()
        _field_heads[key] = head
    return head


def _tab_led(field: str) -> bool:
    return field[0] in "\t\0"


def _escape_string(value: str) -> str:
    if '"' in value or "\\" in value:
        return value.translate(_STRING_ESCAPES)
    return value


def _fields_text(fields: Mapping[str, FieldValue]) -> str:
    """`k=v,k=v` of the storable fields, "" if none.

    The exact built-in types are written inline (`_field_value`'s text, character for
    character): a function call per value would cost ~0.2 us of the ~2.6 us a point takes.
    """
    parts: list[str] = []
    add = parts.append
    field_get = _field_heads.get
    for key, value in fields.items():
        head = field_get(key)
        if head is None:
            head = _field_head(key)
        kind = type(value)
        if kind is float:
            if value - value == 0.0:  # finite: NaN - NaN is NaN, inf - inf is NaN
                add(f"{head}{value!r}")
        elif kind is int:
            add(f"{head}{value}i")
        elif kind is bool:
            add(head + _BOOL_TEXT[value])
        elif kind is str:
            add(f'{head}"{_escape_string(value)}"')
        else:
            encoded = _field_value(value)
            if encoded is not None:
                add(head + encoded)
    if parts and parts[0][0] in "\t\0":
        # InfluxDB skips tabs and NULs before the first field: lead with another field.
        parts.sort(key=_tab_led)
    return ",".join(parts)


def encode_lines(samples: Iterable[Sample]) -> list[str]:
    """The line protocol of `samples`, in order, leaving out those with no storable field.

    The rules are `to_line`'s (which is this function for one sample). This is the
    collector's hot path: the series heads and field keys are cached (see above).
    """
    out: list[str] = []
    append = out.append
    series_get = _series_heads.get
    for sample in samples:
        measurement, tags = sample.measurement, sample.tags
        head = series_get((measurement, *tags, *tags.values()))
        if head is None:
            head = _series_head(measurement, tags)
        text = _fields_text(sample.fields)
        if text:
            append(f"{head}{text} {sample.time_ns}")
    return out


def to_line(sample: Sample) -> str:
    """One sample as one line of InfluxDB line protocol (nanosecond precision).

    Tags are sorted (InfluxDB's preferred order), empty tag keys and values are left out (a
    tag cannot be empty). Returns "" when no field can be stored (all NaN or infinite),
    since a point without fields does not exist in InfluxDB.
    """
    lines = encode_lines((sample,))
    return lines[0] if lines else ""

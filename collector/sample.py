"""The one unit of data that flows from drivers to sinks.

A driver turns one poll into a list of `Sample`s; the collector adds the device's configured
tags, encodes them as InfluxDB line protocol and spools them. Field and measurement names must
be those of docs/metrics.md (tests enforce it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
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


@lru_cache(maxsize=65536, typed=True)
def _escape_key(text: str) -> str:
    """Escape a tag key or tag value; cached since the same few names recur."""
    return str(text).translate(_KEY_ESCAPES)


@lru_cache(maxsize=4096, typed=True)
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


# The encoder. A collector polls the same series again and again, with the same fields of the
# same types, so what depends only on those is done once and cached:
# - the escaped `measurement,tags ` head of a line, per (measurement, tags);
# - per tuple of field keys, a function compiled for the value types first seen with them (see
#   `_compile_fields`), which writes the whole line in one f-string; a sample whose values do not
#   have those types (or are NaN or infinite) takes the general path, `_fields_text`.
# Each cache is emptied when it reaches its bound: a collector with more series or field sets
# than that only loses the speed-up, never correctness. Only text keys and values are cached:
# 1, 1.0 and True are equal as dict keys, yet are written "1", "1.0" and "True".
_SERIES_CACHE_MAX = 65536
_SHAPE_CACHE_MAX = 4096
_FIELD_KEY_CACHE_MAX = 4096

_FieldsEncoder = Callable[[Iterable[object], str, int], "str | None"]

_series_heads: dict[tuple[object, ...], str] = {}
_field_shapes: dict[tuple[object, ...], _FieldsEncoder | None] = {}
_field_heads: dict[str, str] = {}


def _series_key(measurement: str, tags: Mapping[str, str]) -> tuple[object, ...]:
    # Flat (measurement, keys..., values...): quicker to build and hash than a tuple of pairs,
    # and unambiguous since there are as many keys as values. encode_lines inlines it.
    return (measurement, *tags, *tags.values())


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
        _series_heads[_series_key(measurement, tags)] = head
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


def _fields_text(fields: Mapping[str, FieldValue]) -> str:
    """`k=v,k=v` of the storable fields, "" if none: the general path of the encoder."""
    parts: list[str] = []
    add = parts.append
    field_get = _field_heads.get
    for key, value in fields.items():
        head = field_get(key)
        if head is None:
            head = _field_head(key)
        encoded = _field_value(value)
        if encoded is not None:
            add(head + encoded)
    if parts and parts[0][0] in "\t\0":
        # InfluxDB skips tabs and NULs before the first field: lead with another field.
        parts.sort(key=_tab_led)
    return ",".join(parts)


def _escape_string(value: str) -> str:
    if '"' in value or "\\" in value:
        return value.translate(_STRING_ESCAPES)
    return value


# Per value type: the guard a value must pass, and how the compiled f-string writes it (`{v}`
# stands for the value's variable). The text is `_field_value`'s, character for character.
_FAST_TYPES = {
    float: ("type({v}) is float and {v} - {v} == 0.0", "{{{v}!r}}"),  # NaN - NaN is NaN
    int: ("type({v}) is int", "{{{v}}}i"),
    bool: ("type({v}) is bool", "{{_BOOL[{v}]}}"),
    str: ("type({v}) is str", '"{{_escape_string({v})}}"'),
}
_LINE = "{{head}}{fields} {{time_ns}}"


def _compile_fields(keys: tuple[object, ...], values: Iterable[object]) -> _FieldsEncoder | None:
    """A function `(values, head, time_ns) -> line` for fields with these keys whose values
    have the types of `values`, returning None for values of other types (or NaN, infinite);
    None when such fields cannot take this path at all.

    Generated code, as `collections.namedtuple` and `dataclasses` do: its text depends only on
    the number and types of the fields; the keys reach it as variables, never as source text.
    """
    kinds = [type(v) for v in values]
    if not keys or len(kinds) != len(keys) or not all(type(k) is str for k in keys):
        return None
    lead = _escape_field_key(keys[0])
    if any(kind not in _FAST_TYPES for kind in kinds) or lead.startswith(("\t", "\0")):
        return None
    namespace: dict[str, object] = {"_BOOL": ("false", "true"), "_escape_string": _escape_string}
    guards, parts = [], []
    for i, (key, kind) in enumerate(zip(keys, kinds, strict=True)):
        guard, text = _FAST_TYPES[kind]
        namespace[f"_k{i}"] = ("," if i else "") + _escape_field_key(key) + "="
        guards.append(guard.format(v=f"v{i}"))
        parts.append(f"{{_k{i}}}" + text.format(v=f"v{i}"))
    line = _LINE.format(fields="".join(parts))
    source = (
        "def encode(values, head, time_ns):\n"
        f"    {''.join(f'v{i}, ' for i in range(len(keys)))}= values\n"
        f"    if {' and '.join(guards)}:\n"
        f"        return f{line!r}\n"
        "    return None\n"
    )
    exec(source, namespace)  # see the docstring
    return namespace["encode"]  # type: ignore[return-value]


def _unseen(values: Iterable[object], head: str, time_ns: int) -> str | None:
    """Marks a tuple of field keys not compiled yet (None means: cannot be)."""
    return None


def encode_lines(samples: Iterable[Sample]) -> list[str]:
    """The line protocol of `samples`, in order, leaving out those with no storable field.

    The rules are `Sample.to_line`'s (which is this function for one sample). This is the
    collector's hot path: what depends only on the series and on the field keys and types is
    cached (see above), so that a sample costs about 2 us rather than 4.6.
    """
    out: list[str] = []
    append = out.append
    series_get = _series_heads.get
    shape_get = _field_shapes.get
    for sample in samples:
        measurement, tags, fields = sample.measurement, sample.tags, sample.fields
        head = series_get((measurement, *tags, *tags.values()))
        if head is None:
            head = _series_head(measurement, tags)
        keys = tuple(fields)
        encode = shape_get(keys, _unseen)
        if encode is _unseen:
            encode = _compile_fields(keys, fields.values())
            if len(_field_shapes) >= _SHAPE_CACHE_MAX:
                _field_shapes.clear()
            _field_shapes[keys] = encode
        if encode is not None:
            line = encode(fields.values(), head, sample.time_ns)
            if line is not None:
                append(line)
                continue
        text = _fields_text(fields)
        if text:
            append(f"{head}{text} {sample.time_ns}")
    return out


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
        lines = encode_lines((self,))
        return lines[0] if lines else ""

"""Reading back the lines the collector wrote: measurement, field types and timestamp.

The isolation of refused lines (`qkdtel.sinks.isolate`) needs to know, for a line of the
spool, which measurement it belongs to and what type each of its fields has, to tell which
lines a "field type conflict" answer of InfluxDB refers to. Every line of the spool comes from
`qkdtel.sample.encode_lines` (requeued lines too), so this reads that encoder's output by the
rules InfluxDB's own parser applies (models/points.go of InfluxDB 1.x, shared by 2.x):

- in the measurement, tag keys, tag values and field keys a backslash escapes the character
  after it (the encoder escapes `,`, `=`, space, and `"` in field keys); the key ends at the
  first unescaped space, fields at the next one;
- a field value is a string (`"..."`, where `\\"` and `\\\\` are escapes), a boolean
  (t, T, true, True, TRUE and the same for false), an integer (`-12i`), an unsigned integer
  (`12u`), or else a float;
- a line InfluxDB cannot parse (a tag with no value, a tag value ending in a backslash that
  escapes the space after it, a field with no `=`) is answered `None` here too.

It is no full validator: a line read here may still be refused by the server for a reason only
the server knows (a float out of range, a timestamp out of range).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNESCAPE = re.compile(r'\\([,= "])')
"""The escapes InfluxDB undoes in names; any other backslash stays as it is."""
_BOOLEANS = frozenset({"t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"})
_INTEGER = re.compile(r"-?\d+i")
_UNSIGNED = re.compile(r"\d+u")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_TIMESTAMP = re.compile(r"-?\d+")


@dataclass(frozen=True, slots=True)
class ScannedLine:
    """What a line says about itself: measurement (unescaped), each field's type in the
    words InfluxDB uses in its error messages, and the timestamp (None when left out)."""

    measurement: str
    field_types: dict[str, str]
    time_ns: int | None


def _split(text: str, separator: str, limit: int = -1) -> list[str]:
    """`text` cut at each `separator` not escaped by a backslash (the escapes are kept)."""
    parts: list[str] = []
    start = i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == separator and limit != 0:
            parts.append(text[start:i])
            start = i + 1
            limit -= 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(r"\1", text)


def _value_type(value: str) -> str | None:
    """The InfluxDB type of one encoded field value, None if it is not one."""
    if value.startswith('"'):
        return "string" if _string_end(value) == len(value) else None
    if value in _BOOLEANS:
        return "boolean"
    if _INTEGER.fullmatch(value):
        return "integer"
    if _UNSIGNED.fullmatch(value):
        return "unsigned"
    return "float" if _FLOAT.fullmatch(value) else None


def _string_end(text: str) -> int:
    """Index after the closing quote of the string field value `text` starts with, or -1."""
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return -1


def _split_fields(text: str) -> tuple[list[str], str] | None:
    """The `k=v` fields of `text` (fields, then an optional timestamp) and what follows them.

    Commas and spaces inside a quoted string value belong to the value; outside one, a
    backslash escapes the next character."""
    fields: list[str] = []
    start = i = 0
    in_value = False
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "=" and not in_value:
            in_value = True
            if text.startswith('"', i + 1):
                end = _string_end(text[i + 1 :])
                if end == -1:
                    return None
                i += 1 + end
                continue
        elif char in ", ":
            fields.append(text[start:i])
            start, in_value = i + 1, False
            if char == " ":
                return fields, text[start:]
        i += 1
    fields.append(text[start:])
    return fields, ""


def scan_line(line: str) -> ScannedLine | None:
    """Read `line` (see the module docstring); None if InfluxDB would not parse it."""
    key_and_rest = _split(line, " ", 1)
    if len(key_and_rest) != 2:
        return None
    key, rest = key_and_rest
    measurement, *tags = _split(key, ",")
    if not measurement or key.endswith("\\"):
        return None
    for tag in tags:
        pair = _split(tag, "=")
        if len(pair) != 2 or not pair[0] or not pair[1]:
            return None
    split = _split_fields(rest)
    if split is None:
        return None
    fields, tail = split
    field_types: dict[str, str] = {}
    for field in fields:
        name_value = _split(field, "=", 1)
        if len(name_value) != 2 or not name_value[0]:
            return None
        kind = _value_type(name_value[1])
        if kind is None:
            return None
        field_types[_unescape(name_value[0])] = kind
    tail = tail.strip(" ")
    if tail and not _TIMESTAMP.fullmatch(tail):
        return None
    return ScannedLine(_unescape(measurement), field_types, int(tail) if tail else None)

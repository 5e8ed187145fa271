"""Property: a Sample goes to line protocol, into a real InfluxDB and back out unchanged.

Tag keys and values, field keys and string field values are drawn with spaces, commas, `=`,
quotes, backslashes, tabs and any unicode. Left out is only what InfluxDB 1.x cannot store, so
no encoder could round-trip it:
- empty tag keys or values (a tag cannot be empty) and empty field keys;
- newlines in keys and tag values (a newline ends the line; strings fields may hold them);
- a backslash at the end of a key or tag value, or an odd run of backslashes right before `,`,
  `=` or space: InfluxDB's parser pairs backslashes itself, so such a value has no spelling
  (the encoder leaves them so that the write fails and is reported, never stored altered);
- `time` as a tag or field key (InfluxDB refuses it);
- field keys that all start with a tab or NUL (InfluxDB skips those before the first field;
  `to_line` puts any other field first, so one such key among others does round-trip);
- UTF-16 surrogates (not encodable as UTF-8, so not text InfluxDB could receive);
- NaN and infinities (InfluxDB has no such floats; `to_line` leaves those fields out).
"""

from __future__ import annotations

import os
import re
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkdtel.config import InfluxV1Sink
from qkdtel.sample import to_line
from qkdtel.sdk import Sample
from qkdtel.sims.influxd import InfluxServer
from qkdtel.sinks import InfluxV1Writer

# Lone backslashes and the separators are drawn often on purpose; any other code point too.
_TEXT = st.text(
    st.one_of(
        st.sampled_from(list(" ,=\"\\\t'é€\U0001f511")),
        st.characters(blacklist_categories=("Cs",)),
    ),
    min_size=1,
    max_size=12,
)
_UNSPELLABLE = re.compile(r"\\$|(?<!\\)(?:\\\\)*\\[,= ]")


def _storable_key(text: str) -> bool:
    return "\n" not in text and text != "time" and not _UNSPELLABLE.search(text)


KEYS = _TEXT.filter(_storable_key)
TAG_VALUES = _TEXT.filter(lambda t: "\n" not in t and not _UNSPELLABLE.search(t))
FIELD_VALUES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)

_measurements = count()


@pytest.fixture(scope="module")
def roundtrip(influxdb: InfluxServer):
    """Write one Sample through the real v1 writer, read its point back as a dict."""
    db = "roundtrip"
    influxdb.create_database(db)
    writer = InfluxV1Writer(
        InfluxV1Sink(type="influxdb_v1", url=influxdb.url, database=db, name="rt")
    )

    def run(sample: Sample) -> list[dict]:
        writer.write(to_line(sample).encode())
        return influxdb.query(f'SELECT * FROM "{sample.measurement}" GROUP BY *', db)

    yield run
    writer.close()


@settings(
    max_examples=int(os.environ.get("QKDTEL_ROUNDTRIP_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tags=st.dictionaries(KEYS, TAG_VALUES, max_size=4),
    fields=st.dictionaries(KEYS, FIELD_VALUES, min_size=1, max_size=4),
    time_ns=st.integers(-(2**62), 2**62),
)
def test_sample_survives_influxdb_unchanged(roundtrip, tags, fields, time_ns) -> None:
    # A key both tag and field would come back renamed (`key_1`) by the query, not by storage.
    fields = {k: v for k, v in fields.items() if k not in tags}
    if all(k[0] in "\t\0" for k in fields):
        fields[next(k for k in "fghij" if k not in tags)] = 1
    # Measurement names are the drivers' own (docs/metrics.md); their escaping still counts.
    sample = Sample(f"rt {next(_measurements)},m=x", tags, fields, time_ns)
    rows = roundtrip(sample)
    # InfluxDB's JSON writes a whole float without a decimal point (1e16 as 10000000000000000),
    # so Python reads it as an int: compare floats as floats.
    for row in rows:
        row.update({k: float(row[k]) for k, v in fields.items() if type(v) is float and k in row})
    assert rows == [{**tags, **fields, "time": time_ns}]

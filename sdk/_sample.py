"""The one unit of data that flows from drivers and listeners to sinks.

A driver turns one poll into a list of `Sample`s (a listener emits them as they arrive); the
collector adds the device's configured tags, encodes them as InfluxDB line protocol and spools
them. Measurement and field names must be those of docs/metrics.md (tests enforce it).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FieldValue = float | int | bool | str


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


class PartialPoll(list[Sample]):
    """What a poll returns when the device answered but lacked some of what the driver reads
    (a MIB column or scalar gone after a firmware change): the samples of everything it did
    read, and `missing`, the names of what it did not have.

    Why not an error: one absent object must not cost every other measurement of the device
    (Telegraf and snmp_exporter write what they got, too). The collector writes the samples
    and marks the poll `degraded` in `qkdtel_device_status`, naming `missing`. It is a list,
    so code that only wants the samples needs no change.
    """

    def __init__(self, samples: Iterable[Sample], missing: Iterable[str]):
        super().__init__(samples)
        self.missing: tuple[str, ...] = tuple(missing)

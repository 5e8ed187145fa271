"""Finding the lines a sink refused, from what the server says; bisecting only where it is silent.

When a sink refuses part of a batch, the good lines must not go down with the bad ones, and
finding the bad ones must not cost a request per line nor hold the sink up. What each server
answers, and what `write_batch` does about it:

InfluxDB 1.x, `/write` (checked against Debian's influxd 1.6 in tests/test_rejected_lines.py):
- `400 {"error":"partial write: field type conflict: input field \\"f\\" on measurement \\"m\\"
  is type float, already exists as type integer dropped=3"}`: every other point IS stored. The
  message names the first conflict only: `is type` is the type of the first refused line, and
  `dropped` counts every refused point, of every measurement and field. So the refused lines are
  those of `m` whose `f` is not of the type it already has; when they are `dropped` in number
  that is all, else they are set aside and the rest is sent again to hear of the next conflict.
- `400 "partial write: unable to parse '<line>': <why>\\nunable to parse ... dropped=0"`: every
  other line is stored; the unparsable ones are named. Without "partial write" no line could
  be parsed and nothing was stored.
- `400 "partial write: points beyond retention policy dropped=N"`: the N oldest points.
- `400 "partial write: invalid field name: input field \\"time\\" on measurement \\"m\\" is
  invalid dropped=N"`: the lines of `m` with that field.
- One error per answer: a parse error is not reported when a conflict or a retention drop is
  (the unparsable lines are lost without a word), a retention drop is not reported when a
  conflict is, and with points in several shards only one shard's error comes back. So after a
  partial write that is not about parsing, the lines that may hide behind it are sent once more
  on their own: lines `scan_line` cannot read, and, after a conflict, lines older than an hour
  (1.x's shortest retention). Newer 1.x add " for database: d for retention policy: rp" after
  `dropped=N` (unpoller/unpoller#944).

InfluxDB 2.x, `/api/v2/write` (docs-v2, content/shared/influxdb-v2/write-data/troubleshoot.md:
"400 ... All request data was rejected and not written", "422 ... Data that has not been
rejected is ingested and queryable"):
- `400 {"code":"invalid","message":"unable to parse '<line>': <why>"}` (influxdata/influxdb
  #20895): nothing was written; the named lines are set aside and the rest is sent again.
- `422 {"code":"unprocessable entity","message":"failure writing points to database: partial
  write: field type conflict: ... dropped=N"}` (tkurki/signalk-to-influxdb2#84): as 1.x above;
  retention: "partial write: dropped N points outside retention policy ... dropped=N".
InfluxDB 1.8+ answers its `/api/v2/write` as 1.x does. InfluxDB 3 / IOx answer `400
{"code":"invalid","line":N,...}` (influxdata/docs-v2#5160): line N (from 1) is set aside and
the rest sent again.

A 413, or a 400 that names nothing usable, leaves nothing to go by: the lines are bisected. Every
batch's isolation has a budget (ISOLATION_SECONDS, and 4*log2(n)+8 requests): what is not
settled when it runs out is set aside as rejected with a reason saying so, and `qkdtel spool
rejected --requeue` sends it again. A writer being stopped sends nothing more. Sending a line
twice is harmless: it rewrites the same series and timestamp.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qkdtel.sinks.base import (
    RejectedWriteError,
    RetryableWriteError,
    SinkWriter,
    redact,
)
from qkdtel.sinks.lineprotocol import scan_line

ISOLATION_SECONDS = 5.0
"""Longest a batch's isolation may take (half the default shutdown grace)."""

EXTRA_REQUESTS = 8
"""Requests allowed on top of 4*log2(n) for a batch of n lines (bisection finds two refused
lines among n in about 4*log2(n) requests)."""

SHORTEST_RETENTION_NS = 3600 * 10**9
"""InfluxDB 1.x refuses retention policies shorter than an hour."""

_CONFLICT = re.compile(
    r'field type conflict: input field "(?P<field>.*)" on measurement "(?P<measurement>.*)" '
    r"is type \w+, already exists as type (?P<type>\w+)"
)
_INVALID_FIELD = re.compile(
    r'invalid field name: input field "(?P<field>.*)" on measurement "(?P<measurement>.*)" '
    r"is invalid"
)
_RETENTION = re.compile(r"(beyond|outside) retention policy")
_DROPPED = re.compile(r" dropped=(\d+)")
_PARSE_MARKER = "unable to parse '"

Refused = list[tuple[str, str]]


def write_batch(
    writer: SinkWriter,
    body: bytes,
    lines: Callable[[], Sequence[str]],
    stopped: threading.Event | None = None,
) -> Refused:
    """Write `body`; return the lines the sink refused, as (line, reason), the rest written.

    `lines()` (the lines of `body`, in order) is only called if the sink refuses the body.
    A RetryableWriteError propagates: the caller retries the whole batch later; so does a set
    `stopped` (the writer's task has ended) while refused lines are being isolated.
    """
    try:
        writer.write(body)
        return []
    except RejectedWriteError as exc:
        return _Isolation(writer, list(lines()), stopped).run(exc)


@dataclass
class _Settled:
    """What one answer tells: lines refused (index -> reason), groups to send again."""

    refused: dict[int, str]
    again: list[list[int]]


class _Isolation:
    """The isolation of one refused batch (see the module docstring)."""

    def __init__(
        self, writer: SinkWriter, lines: list[str], stopped: threading.Event | None
    ) -> None:
        self.writer = writer
        self.lines = lines
        self.stopped = stopped
        self.requests_left = 4 * math.ceil(math.log2(max(2, len(lines)))) + EXTRA_REQUESTS
        self.deadline = time.monotonic() + ISOLATION_SECONDS
        self.started = time.monotonic()
        self.sent = 1

    def run(self, exc: RejectedWriteError) -> Refused:
        refused: dict[int, str] = {}
        todo: list[tuple[list[int], RejectedWriteError]] = [(list(range(len(self.lines))), exc)]
        while todo:
            indices, answer = todo.pop()
            settled = self._settle(indices, answer)
            refused.update(settled.refused)
            for group in reversed(settled.again):
                retry = self._send(group, answer, refused)
                if retry is not None:
                    todo.append((group, retry))
        return [(self.lines[i], refused[i]) for i in sorted(refused)]

    def _send(
        self, group: list[int], previous: RejectedWriteError, refused: dict[int, str]
    ) -> RejectedWriteError | None:
        """Send `group` again; its refusal, or None once written (or set aside, out of budget)."""
        if self.stopped is not None and self.stopped.is_set():
            raise RetryableWriteError("writer stopped while isolating refused lines")
        if self.requests_left <= 0 or time.monotonic() >= self.deadline:
            why = redact(
                f"isolation stopped after {self.sent} requests in "
                f"{time.monotonic() - self.started:.1f} s (budget); last answer: {previous}"
            )
            refused.update(dict.fromkeys(group, why))
            return None
        self.requests_left -= 1
        self.sent += 1
        try:
            self.writer.write("\n".join(self.lines[i] for i in group).encode())
        except RejectedWriteError as exc:
            return exc
        return None

    def _settle(self, indices: list[int], exc: RejectedWriteError) -> _Settled:
        """What the answer `exc` to sending exactly `indices` tells."""
        detail = exc.detail
        if exc.line is not None and 1 <= exc.line <= len(indices):
            bad = indices[exc.line - 1]
            rest = [i for i in indices if i != bad]
            return _Settled({bad: redact(str(exc))}, [rest] if rest else [])
        if len(indices) == 1:
            return _Settled({indices[0]: redact(str(exc))}, [])
        partial = "partial write" in detail
        named, complete = _named_lines(detail, [self.lines[i] for i in indices])
        if named and complete:
            refused = {indices[k]: redact(f"HTTP {exc.status}: {why}") for k, why in named.items()}
            rest = [i for i in indices if i not in refused]
            return _Settled(refused, [] if partial or not rest else [rest])
        dropped = _DROPPED.search(detail)
        if partial and dropped is not None:
            classified = self._classify(indices, exc, int(dropped.group(1)))
            if classified is not None:
                return classified
        middle = len(indices) // 2
        return _Settled({}, [indices[:middle], indices[middle:]])

    def _classify(
        self, indices: list[int], exc: RejectedWriteError, dropped: int
    ) -> _Settled | None:
        """The refused lines of a partial write by its reason; None if it cannot tell."""
        detail = exc.detail
        conflict = _CONFLICT.search(detail) or _INVALID_FIELD.search(detail)
        if conflict is not None:
            refused = self._by_field(indices, exc.status, conflict)
        elif _RETENTION.search(detail):
            refused = self._oldest(indices, exc.status, dropped)
        else:
            return None
        if not refused or len(refused) > dropped:
            return None
        rest = [i for i in indices if i not in refused]
        if len(refused) < dropped:
            # More was dropped than this reason explains: hear about the rest.
            return _Settled(refused, [rest] if rest else [])
        hidden = self._may_hide(rest, after_conflict=conflict is not None)
        return _Settled(refused, [hidden] if hidden else [])

    def _by_field(self, indices: list[int], status: int, match: re.Match[str]) -> dict[int, str]:
        """Lines of the named measurement whose named field has another type than the one it
        already has (a conflict), or that have the field at all (an invalid field name)."""
        measurement, field = match["measurement"], match["field"]
        expected = match.groupdict().get("type")
        refused = {}
        for i in indices:
            scanned = scan_line(self.lines[i])
            if scanned is None or scanned.measurement != measurement:
                continue
            kind = scanned.field_types.get(field)
            if kind is None or kind == expected:
                continue
            if expected is None:
                why = f'invalid field name: input field "{field}" on measurement "{measurement}"'
            else:
                why = (
                    f'field type conflict: input field "{field}" on measurement "{measurement}" '
                    f"is type {kind}, already exists as type {expected}"
                )
            refused[i] = redact(f"HTTP {status}: {why}")
        return refused

    def _oldest(self, indices: list[int], status: int, dropped: int) -> dict[int, str]:
        """The `dropped` oldest lines, if they are told apart from the others by their time."""
        times = []
        for i in indices:
            scanned = scan_line(self.lines[i])
            if scanned is None or scanned.time_ns is None:
                return {}
            times.append((scanned.time_ns, i))
        times.sort()
        if not 0 < dropped <= len(times):
            return {}
        if dropped < len(times) and times[dropped - 1][0] == times[dropped][0]:
            return {}
        why = redact(f"HTTP {status}: points beyond retention policy (the oldest of the request)")
        return {i: why for _, i in times[:dropped]}

    def _may_hide(self, indices: list[int], after_conflict: bool) -> list[int]:
        """Lines a partial write may have dropped without a word: those that do not parse,
        and after a conflict, those a retention policy may have dropped."""
        horizon = time.time_ns() - SHORTEST_RETENTION_NS
        hidden = []
        for i in indices:
            scanned = scan_line(self.lines[i])
            old = scanned is not None and (scanned.time_ns or horizon) < horizon
            if scanned is None or (after_conflict and old):
                hidden.append(i)
        return hidden


def _named_lines(detail: str, lines: list[str]) -> tuple[dict[int, str], bool]:
    """Positions in `lines` of those an `unable to parse '<line>': <why>` message names, and
    whether every line the message names is one of `lines`."""
    if _PARSE_MARKER not in detail:
        return {}, False
    wanted: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        wanted.setdefault(line, []).append(index)
    named: dict[int, str] = {}
    complete = True
    for segment in detail.split(_PARSE_MARKER)[1:]:
        # The line itself may contain "': ", so try each split until the prefix is one of ours.
        start = 0
        while (cut := segment.find("': ", start)) != -1:
            candidate = segment[:cut]
            if candidate in wanted:
                why = segment[cut + 3 :].split("\n", 1)[0]
                why = why.rsplit(" dropped=", 1)[0]
                for index in wanted[candidate]:
                    named[index] = f"unable to parse: {why}"
                break
            start = cut + 1
        else:
            complete = False
    return named, complete

"""The durable queue between polling and writing: line protocol in one SQLite database.

Why SQLite in WAL mode (from the standard library) rather than files of our own:
- a submit is one transaction: once `append` returns, its points are on disk (WAL journal,
  `synchronous=FULL`, so fsync'ed) and survive a kill -9 or a power cut, and a half-written
  submit never becomes visible; a file format of our own would need its own framing, checksums
  and recovery code to get there;
- rows keep their insertion order (`id`), so every sink replays in the order points came in;
- WAL lets the writers read while the poller appends, and lets `qkdtel spool rejected` inspect
  and requeue while the daemon runs;
- acknowledged points are deleted by a range delete on the primary key, so a long outage does not
  make the file slower to use.

Layout: `points` holds every point not yet acknowledged by every sink; `cursors` holds, per sink,
the id of the last point that sink acknowledged (so an outage of one sink never holds back
another, and each sink receives every point); `rejected` keeps the lines a sink refused as
malformed, with the reason, for an operator to inspect or requeue.

Only deletions at the front ever remove points (acknowledged by all, or dropped on overflow), so
ids are consecutive and counting the spool is `max(id) - min(id) + 1`, with no table scan.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.sqlite3"
"""Name of the database inside `collector.spool_dir`."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    line TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT PRIMARY KEY,
    acked_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    line TEXT NOT NULL
);
"""
# AUTOINCREMENT: a plain rowid may be reused once the newest rows are deleted, and a reused id at
# or below a sink's cursor would be skipped by that sink.


@dataclass(frozen=True, slots=True)
class Batch:
    """Points read for one sink, oldest first; `ids[i]` is the spool id of `lines[i]`."""

    ids: list[int]
    lines: list[str]

    @property
    def last_id(self) -> int:
        return self.ids[-1]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What `Spool.append` did: points stored, and per sink the points lost to overflow."""

    accepted: int
    dropped: dict[str, int] = field(default_factory=dict)
    discarded: int = 0
    """Distinct points that overflow removed from the spool or refused (for the error log)."""


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A line a sink refused as malformed, kept aside with the sink's reason."""

    id: int
    sink: str
    time_ns: int
    reason: str
    line: str


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: every transaction is an explicit BEGIN IMMEDIATE ... COMMIT below.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    return conn


class _Transaction:
    """`with _Transaction(conn):` -- BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on error.

    IMMEDIATE takes the write lock at once, so a concurrent writer (the CLI in another process)
    waits for the busy timeout instead of failing half-way through.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


class Spool:
    """The on-disk queue of one collector, shared by all its sinks.

    Thread-safe: the daemon calls it from worker threads (`asyncio.to_thread`), one at a time per
    connection, guarded by a lock. Every method that changes anything is one transaction.
    """

    def __init__(
        self,
        path: Path,
        sinks: Sequence[str],
        max_points: int,
        overflow: Literal["drop_oldest", "reject_new"] = "drop_oldest",
    ) -> None:
        self.path = path
        self.max_points = max_points
        self.overflow = overflow
        self._lock = threading.Lock()
        self._conn = _connect(path)
        with self._lock, _Transaction(self._conn) as conn:
            stored = dict(conn.execute("SELECT sink, acked_id FROM cursors").fetchall())
            self._min_id, self._max_id = self._bounds(conn)
            for gone in sorted(set(stored) - set(sinks)):
                lost = max(0, self._max_id - stored[gone])
                conn.execute("DELETE FROM cursors WHERE sink = ?", (gone,))
                if lost:
                    log.warning(
                        "sink %s is no longer configured: its %d spooled points will not be sent",
                        gone,
                        lost,
                    )
            # A new sink starts at the oldest point still spooled: it receives all of them.
            self._cursors = {s: stored.get(s, self._min_id - 1) for s in sinks}
            conn.executemany(
                "INSERT OR REPLACE INTO cursors (sink, acked_id) VALUES (?, ?)",
                list(self._cursors.items()),
            )
            self._prune(conn)

    @staticmethod
    def _bounds(conn: sqlite3.Connection) -> tuple[int, int]:
        """(first id, last id) of the points table; (next id, next id - 1) when empty."""
        # Two subqueries: SQLite answers a lone min() or max() from the index ends, but scans the
        # whole table for both in one SELECT.
        low, high = conn.execute(
            "SELECT (SELECT min(id) FROM points), (SELECT max(id) FROM points)"
        ).fetchone()
        if high is None:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'points'").fetchone()
            last = row[0] if row else 0
            return last + 1, last
        return low, high

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- the poller's side -------------------------------------------------------------------

    def append(self, lines: Sequence[str]) -> AppendResult:
        """Store `lines` durably, applying the overflow policy; returns what was kept and lost."""
        if not lines:
            return AppendResult(0)
        with self._lock, _Transaction(self._conn) as conn:
            self._min_id, self._max_id = self._bounds(conn)
            held = self._max_id - self._min_id + 1
            excess = held + len(lines) - self.max_points
            dropped = dict.fromkeys(self._cursors, 0)
            discarded = 0
            if excess > 0 and self.overflow == "reject_new":
                keep = max(0, self.max_points - held)
                discarded = len(lines) - keep
                lines = lines[:keep]
                dropped = dict.fromkeys(self._cursors, discarded)
            elif excess > 0:
                if len(lines) > self.max_points:
                    discarded = len(lines) - self.max_points
                    lines = lines[discarded:]
                    dropped = dict.fromkeys(self._cursors, discarded)
                cut = self._min_id + min(held, excess) - 1
                for sink, acked in self._cursors.items():
                    dropped[sink] += max(0, cut - acked)
                    self._cursors[sink] = max(acked, cut)
                discarded += conn.execute("DELETE FROM points WHERE id <= ?", (cut,)).rowcount
                conn.executemany(
                    "UPDATE cursors SET acked_id = ? WHERE sink = ?",
                    [(acked, sink) for sink, acked in self._cursors.items()],
                )
            if lines:
                conn.executemany("INSERT INTO points (line) VALUES (?)", [(x,) for x in lines])
            self._min_id, self._max_id = self._bounds(conn)
        return AppendResult(len(lines), {s: n for s, n in dropped.items() if n}, discarded)

    # -- a writer's side ---------------------------------------------------------------------

    def read(self, sink: str, limit: int) -> Batch | None:
        """The oldest points `sink` has not acknowledged, at most `limit`; None if none."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, line FROM points WHERE id > ? ORDER BY id LIMIT ?",
                (self._cursors[sink], limit),
            ).fetchall()
        if not rows:
            return None
        ids, lines = zip(*rows, strict=True)
        return Batch(list(ids), list(lines))

    def refresh(self) -> None:
        """Take in points another process (`qkdtel spool rejected --requeue`) appended."""
        with self._lock:
            self._min_id, self._max_id = self._bounds(self._conn)

    def ack(
        self, sink: str, batch: Batch, rejected: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, int]:
        """Record that `sink` has dealt with `batch`: written, or refused as `(line, reason)`.

        Returns (points written, points rejected) that are still counted for this sink: points of
        the batch that overflow dropped while it was in flight were already counted as dropped.
        """
        now = time.time_ns()
        with self._lock, _Transaction(self._conn) as conn:
            acked = self._cursors[sink]
            fresh = len(batch.ids) - bisect_right(batch.ids, acked)
            if rejected:
                conn.executemany(
                    "INSERT INTO rejected (sink, time_ns, reason, line) VALUES (?, ?, ?, ?)",
                    [(sink, now, reason, line) for line, reason in rejected],
                )
            if batch.last_id > acked:
                self._cursors[sink] = batch.last_id
                conn.execute(
                    "UPDATE cursors SET acked_id = ? WHERE sink = ?", (batch.last_id, sink)
                )
                self._prune(conn)
        refused = min(len(rejected), fresh)
        return fresh - refused, refused

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Delete the points every sink has acknowledged."""
        done = min(self._cursors.values(), default=self._max_id)
        if done >= self._min_id:
            conn.execute("DELETE FROM points WHERE id <= ?", (done,))
            self._min_id = done + 1

    # -- accounting ----------------------------------------------------------------------------

    def pending(self, sink: str) -> int:
        """Points waiting for `sink` (as of the last append or refresh)."""
        return max(0, self._max_id - self._cursors[sink])

    def size(self) -> int:
        """Points held in the spool (as of the last append or refresh)."""
        return max(0, self._max_id - self._min_id + 1)


# -- the rejected lines, for the CLI (works while the daemon runs: WAL) ----------------------


def list_rejected(path: Path, sink: str | None = None) -> list[RejectedLine]:
    """Every line kept aside as rejected, oldest first, optionally of one sink only."""
    conn = _connect(path)
    try:
        query = "SELECT id, sink, time_ns, reason, line FROM rejected"
        args: tuple[str, ...] = ()
        if sink is not None:
            query += " WHERE sink = ?"
            args = (sink,)
        return [RejectedLine(*row) for row in conn.execute(query + " ORDER BY id", args)]
    finally:
        conn.close()


def requeue_rejected(path: Path, ids: Sequence[int] = (), sink: str | None = None) -> int:
    """Move rejected lines (all, those of `sink`, or those with `ids`) back into the queue.

    A requeued line goes to every sink again, not only to the one that refused it: a sink that
    already stored it rewrites the same series and timestamp, which is idempotent. Returns the
    number of lines requeued.
    """
    conn = _connect(path)
    try:
        with _Transaction(conn):
            clauses, args = [], []
            if ids:
                clauses.append(f"id IN ({','.join('?' * len(ids))})")
                args.extend(ids)
            if sink is not None:
                clauses.append("sink = ?")
                args.append(sink)
            where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
            rows = conn.execute(f"SELECT id, line FROM rejected{where} ORDER BY id", args)
            moved = rows.fetchall()
            conn.executemany("INSERT INTO points (line) VALUES (?)", [(r[1],) for r in moved])
            conn.executemany("DELETE FROM rejected WHERE id = ?", [(r[0],) for r in moved])
        return len(moved)
    finally:
        conn.close()

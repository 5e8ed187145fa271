"""Orphaned spools: delivered by the collector that finds them, never silently left behind.

Every collector spools into a directory of its own: `spool_dir` (B) unsharded, `B.shard-<k>` as
shard k (`--shard`, `collector.shard`, or worker w of host shard i/M under `qkdtel run --workers
N`: global shard i*N + w of M*N, `qkdtel.cli_workers`). When an operator changes the layout on a
host (`--workers 2` -> 1, `--shard` 4 -> 2, sharded -> unsharded or back), the spools no
collector of the new layout owns would keep their undelivered points (an outage's backlog) for
good. So a starting collector adopts them:

- which are orphans (`is_orphan`): unsharded, every `B.shard-<k>`; as shard i of N (the global
  count, workers included), B itself and every `B.shard-<k>` with k >= N. Never a shard index
  below N: that shard's own collector may be between a crash and its restart, its lock briefly
  free, and adopting its spool would make it exit 2 when it comes back. Only a directory holding
  a spool database counts.
- one orphan (`_Adoption`): its lock taken without waiting (`qkdtel.spool_lock`; a live holder
  keeps it: left alone, said at INFO), opened as the daemon opens its own spool (a damaged one
  is salvaged, `qkdtel.spool_salvage.open_spool`), every point still pending for any of this
  collector's sinks copied in batches through delivery's normal append (`Delivery.adopt`: the
  overflow policy and the counting apply) from the lowest cursor among them (a sink the orphan
  never knew starts at its oldest point) while this collector's spool is within
  `ADOPT_SHARE` of its limits (past it, adoption waits for the backlog to go: it never makes
  room by dropping), then acknowledged in the orphan; lines its sinks had
  rejected are kept aside in this collector's spool; once drained, its files and directory are
  removed (the parent fsync'ed) and the lock released. One INFO line per orphan says how many
  points came over.

At least once, never lost: a batch is committed to this collector's spool before the orphan
forgets it, so a crash between the two only copies it again at the next start. A line a sink
already had, sent again (a point another sink had not acknowledged yet, or such a copy), is
harmless: InfluxDB keeps one point per series and timestamp.

Runs as a task of the daemon beside polling: every blocking step in a worker thread, the appends
through delivery's group commit on the event loop, so polling never waits for it; stopping the
daemon stops it between two batches (the rest stays in the orphan for the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qkdtel.config import CollectorSettings, ShardSettings
from qkdtel.delivery import Delivery
from qkdtel.spool import (
    SPOOL_FILE,
    Batch,
    Spool,
    SpoolAccessError,
    SpoolCorruptError,
    SpoolLayoutError,
    _sibling,
    list_rejected,
    spool_status,
)
from qkdtel.spool_lock import SpoolLock, SpoolLockedError
from qkdtel.spool_salvage import SIDE_FILES, _fsync_dir, open_spool
from qkdtel.spool_space import RESERVE_FILE

log = logging.getLogger(__name__)

ADOPT_BATCH = 10_000
"""Points copied per append (one group commit, about 1 MB): big enough that millions go over in
a few hundred commits, small enough that polls committing beside it never wait long."""

ADOPT_SHARE = 0.5
"""Adoption fills this collector's spool to at most this share of its limits (points, bytes):
the rest is the live polls'. It never makes room by dropping: the overflow policy is for what
this collector polls, and the orphan keeps its points safely until there is room."""

ROOM_WAIT_S = 5.0
"""How often adoption looks again for room while this collector's spool is past its share
(its sinks down: the backlog delivered first makes room)."""

_SHARD_SUFFIX = re.compile(r"\.shard-(0|[1-9][0-9]*)")
"""The suffix `qkdtel.shard.spool_dir` gives, exactly (`.shard-03` is no shard's)."""

_EXPECTED = (SpoolAccessError, SpoolLayoutError, SpoolCorruptError, OSError, sqlite3.Error)
"""What an orphan can throw at us that an operator fixes (permissions, a layout, a disk): logged
in one line with its path, no traceback."""


def base_spool_dir(settings: CollectorSettings) -> Path:
    """B, the unsharded `spool_dir`, from a collector's own (`B.shard-<index>` when sharded)."""
    own = settings.spool_dir
    if settings.shard is None:
        return own
    return own.with_name(own.name.removesuffix(f".shard-{settings.shard.index}"))


def is_orphan(index: int | None, running: ShardSettings | None) -> bool:
    """Whether the spool of shard `index` (None: the unsharded B) belongs to no collector of
    the layout this collector runs in (`running`: its shard, global count; None: unsharded).

    A shard index below the running count is never an orphan: its collector may be restarting.
    """
    if running is None:
        return index is not None
    return index is None or index >= running.count


def _shard_index(base: Path, directory: Path) -> int | None:
    """k of `B.shard-<k>` beside `base`; None for anything else."""
    suffix = directory.name.removeprefix(base.name)
    if suffix == directory.name:
        return None
    match = _SHARD_SUFFIX.fullmatch(suffix)
    return int(match[1]) if match else None


def orphans(base: Path, running: ShardSettings | None) -> list[Path]:
    """The orphaned spool directories beside `base` (B), lowest shard first: those `is_orphan`
    names that hold a spool database."""
    found: list[tuple[int, Path]] = []
    if base.parent.is_dir():
        for entry in base.parent.iterdir():
            index = _shard_index(base, entry)
            if index is not None:
                found.append((index, entry))
    candidates = [(-1, base), *sorted(found)]
    return [
        directory
        for index, directory in candidates
        if is_orphan(None if index < 0 else index, running) and (directory / SPOOL_FILE).is_file()
    ]


def orphan_pending(directory: Path, sinks: Sequence[str]) -> int:
    """Points an orphan holds that some of `sinks` has not acknowledged (a sink it never knew:
    every point it holds), read without taking anything (`qkdtel spool status`)."""
    status = spool_status(directory / SPOOL_FILE)
    known = {s.sink: s.pending for s in status.sinks}
    return max((known.get(sink, status.points) for sink in sinks), default=0)


async def adopt_orphans(
    delivery: Delivery, settings: CollectorSettings, stopping: Callable[[], bool]
) -> None:
    """Adopt every orphan of this collector's layout into its spool (see the module docstring).
    Never raises for an orphan: what goes wrong is logged with its path and the orphan left as
    it is."""
    sinks = delivery.sink_names
    base = base_spool_dir(settings)
    try:
        found = await asyncio.to_thread(orphans, base, settings.shard)
    except OSError as exc:
        log.error("cannot look for orphaned spools beside %s: %s", base, exc)
        return
    for directory in found:
        if stopping():
            break
        adoption = _Adoption(directory, delivery, settings, sinks)
        try:
            await adoption.run(stopping)
        except _EXPECTED as exc:
            log.error(
                "cannot adopt the orphaned spool %s: %s: %s; it is left as it is",
                directory,
                type(exc).__name__,
                exc,
            )
        except Exception:
            log.exception("cannot adopt the orphaned spool %s; it is left as it is", directory)


@dataclass
class _Adoption:
    """One orphan being adopted: locked, drained into delivery's spool, removed."""

    directory: Path
    delivery: Delivery
    settings: CollectorSettings
    sinks: list[str]
    copied: int = 0

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Adopt the orphan if no live process holds it."""
        lock = await asyncio.to_thread(self._claim)
        if lock is None:
            return
        try:
            spool, report = await asyncio.to_thread(open_spool, self._path, self._open)
            self.delivery.count_salvage(report)
            try:
                left = await self._drain(spool, stopping)
                if left is None:
                    await asyncio.to_thread(self._keep_rejected)
            finally:
                await asyncio.to_thread(spool.close)
            if left is None:
                left = "" if await asyncio.to_thread(self._remove) else self._kept_files()
            self._say(left)
        finally:
            lock.release()

    @property
    def _path(self) -> Path:
        return self.directory / SPOOL_FILE

    def _claim(self) -> SpoolLock | None:
        """In a thread: the orphan's lock, or None when a live process holds it or the orphan
        went meanwhile (another worker adopted it)."""
        if not self._path.is_file():
            return None
        lock = SpoolLock(self.directory)
        try:
            lock.acquire()
        except SpoolLockedError as exc:
            log.info("orphaned spool %s left alone: %s", self.directory, exc)
            return None
        if self._path.is_file():
            return lock
        # Adopted and removed by another collector between the look and the lock: the lock
        # made the directory again, empty.
        lock.release()
        with contextlib.suppress(OSError):  # not empty: someone else's now
            self.directory.rmdir()
        return None

    def _open(self) -> Spool:
        """The orphan as a spool with this collector's sinks: a sink it never knew starts at its
        oldest point; cursors of sinks no longer configured are dropped (logged by the spool)."""
        return Spool(
            self._path,
            self.sinks,
            self.settings.spool_max_points,
            self.settings.overflow,
            self.settings.spool_max_bytes,
        )

    async def _drain(self, spool: Spool, stopping: Callable[[], bool]) -> str | None:
        """Copy the orphan's pending points into delivery's spool, batch by batch, each
        committed there before the orphan acknowledges it; returns None once drained, else why
        the rest stays in the orphan."""
        limit = min(ADOPT_BATCH, int(self.settings.spool_max_points * ADOPT_SHARE) // 4)
        while not stopping():
            found = await asyncio.to_thread(_next_batch, spool, self.sinks, limit)
            if found is None:
                return None
            batch, lines = found
            if not await self._wait_for_room(lines, stopping):
                break
            kept = await self.delivery.adopt(lines)
            if kept < len(batch):
                # This collector's spool is full (reject_new, a full disk) or failing: the
                # orphan keeps the batch (what was kept comes over again, harmlessly).
                return "; this collector's spool keeps no more, the rest stays there for now"
            self.copied += len(batch)
            await asyncio.to_thread(_acknowledge, spool, self.sinks, batch)
        return "; the daemon is stopping, the rest stays there for the next start"

    async def _wait_for_room(self, lines: list[str], stopping: Callable[[], bool]) -> bool:
        """Until `lines` fit (`_room_for`), said once at INFO when they do not at first;
        False if the daemon stops meanwhile."""
        if await asyncio.to_thread(self._room_for, lines):
            return True
        log.info(
            "adopting %s: waits for room, this collector's spool is past %d %% of its limits"
            " (%s points adopted so far)",
            *(self.directory, ADOPT_SHARE * 100, f"{self.copied:,}"),
        )
        while not stopping():
            await _sleep_unless(stopping, ROOM_WAIT_S)
            if not stopping() and await asyncio.to_thread(self._room_for, lines):
                return True
        return False

    def _room_for(self, lines: list[str]) -> bool:
        """In a thread: whether `lines` fit in this collector's spool within `ADOPT_SHARE` of
        its limits (points; bytes, counting the lines' text as their size) and its disk is not
        full."""
        own = self.delivery.spool
        if own.disk_full:
            return False
        points = own.size() + len(lines) <= own.max_points * ADOPT_SHARE
        size = own.bytes_on_disk() + sum(map(len, lines)) <= own.max_bytes * ADOPT_SHARE
        return points and size

    def _keep_rejected(self) -> None:
        """In a thread: the lines the orphan's sinks refused, kept aside in delivery's spool
        (for `qkdtel spool rejected`) under the same sink; those of sinks no longer configured
        are dropped, counted in the log."""
        rows = list_rejected(self._path)
        ours = [row for row in rows if row.sink in self.sinks]
        for sink in {row.sink for row in ours}:
            kept = [(row.line, row.reason) for row in ours if row.sink == sink]
            # An acknowledgement of no point that refuses these lines: the spool's one way to
            # set lines aside; it moves no cursor.
            self.delivery.spool.ack(sink, Batch(1, 0, b""), kept)
        if len(rows) > len(ours):
            log.warning(
                "orphaned spool %s: %d rejected lines of sinks no longer configured not kept",
                self.directory,
                len(rows) - len(ours),
            )

    def _remove(self) -> bool:
        """In a thread: delete the drained orphan's files, then its directory if nothing else
        is left in it (a damaged copy salvage moved aside stays, for a post-mortem); returns
        whether the directory went."""
        for file in (self._path, *(_sibling(self._path, s) for s in SIDE_FILES)):
            file.unlink(missing_ok=True)
        (self.directory / RESERVE_FILE).unlink(missing_ok=True)
        _fsync_dir(self.directory)
        try:
            self.directory.rmdir()
        except OSError:
            return False
        _fsync_dir(self.directory.parent)
        return True

    def _kept_files(self) -> str:
        """What keeps a drained orphan's directory from going (a damaged copy)."""
        left = sorted(p.name for p in self.directory.iterdir())
        return f" and removed its spool (the directory keeps {', '.join(left)})"

    def _say(self, left: str) -> None:
        """The one line per orphan: how many points came over, and what became of it (`left`:
        empty once it is gone)."""
        log.info(
            "adopted %s pending points from %s (no collector of this layout owns it)%s",
            f"{self.copied:,}",
            self.directory,
            left or " and removed it",
        )


async def _sleep_unless(stopping: Callable[[], bool], seconds: float) -> None:
    """Sleep `seconds`, or less once `stopping()` says the daemon stops (checked every 0.2 s)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not stopping() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)


def _next_batch(spool: Spool, sinks: Sequence[str], limit: int) -> tuple[Batch, list[str]] | None:
    """The next points (at most `limit`) the orphan holds for the sink furthest behind, and
    their lines (split here, off the event loop); None once drained."""
    behind = min(sinks, key=spool.cursor)
    batch = spool.read(behind, limit)
    return None if batch is None else (batch, batch.lines)


def _acknowledge(spool: Spool, sinks: Sequence[str], batch: Batch) -> None:
    """Every sink is done with `batch` in the orphan (it is in delivery's spool now)."""
    for sink in sinks:
        if spool.cursor(sink) < batch.last_seq:
            spool.ack(sink, batch)

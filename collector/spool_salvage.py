"""A damaged spool file: move it aside, salvage what can be read into a fresh spool, count what
was lost, and say so once.

Written here rather than taken from a library: Python's sqlite3 has no `.recover`, and the
sqlite3 shell's `.recover` (or SQLite's recovery extension) is not a run-time dependency we
want. The salvage reads through SQLite itself, row by row in sequence order, and jumps over what
raises: a key range that cannot be read is lost, and since sequence numbers are consecutive
(see `qkdtel.spool`), the points it held are counted exactly from the chunks on either side. Two
repairs are made on a scratch copy first, never on the file moved aside:
- garbage over the 100-byte database header (SQLite: "file is not a database") -- a new header
  is written; everything after it is the spool's own pages;
- a damaged write-ahead log (SQLite silently ignores a log whose header, or the commits after a
  frame whose checksum, is wrong) -- the checksum chain of the current log's frames is written
  anew, so that SQLite reads them, and a damaged page among them fails row by row as above.

What counts as lost: points between the lowest sink cursor and the newest sequence number the
file (or the live spool) knows, not read back. Cursors are salvaged too, so that points already
delivered are not sent again; when they cannot be read, every salvaged point is sent again to
every sink, which is harmless: InfluxDB stores a point rewritten with the same series and
timestamp once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qkdtel.spool import (
    _WAL_MAGIC,
    LAYOUT_VERSION,
    PAGE_SIZE,
    WAL_FRAME_HEADER,
    WAL_HEADER,
    Spool,
    SpoolCorruptError,
    _connect,
    _insert_chunk,
    _sibling,
    _Transaction,
    is_damage,
    wal_checksum,
)

log = logging.getLogger(__name__)

SIDE_FILES = ("-wal", "-shm")
"""SQLite's companions of a database file, moved along with it."""

COPY_BATCH = 256
"""Chunks written to the fresh spool per transaction."""

_DB_MAGIC = b"SQLite format 3\0"
_NO_KEY = 1 << 62
"""Upper bound of the key search when the file does not say its largest key."""

_Chunk = tuple[int, int, bytes, bytes | None]
"""(first_seq, points, body, ends), or (after, points, body, ends) to insert."""


@dataclass
class SalvageReport:
    """What a salvage found and did; `message()` is the one error line for the operator."""

    path: Path
    moved_to: Path
    problem: str
    size_bytes: int
    points_saved: int = 0
    chunks_saved: int = 0
    points_lost: int = 0
    lost_exact: bool = True
    """False when the bounds of what the file held are unknown: more may have been lost."""
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)
    cursors_saved: bool = False
    rejected_saved: int = 0
    rejected_lost: bool = False

    def message(self) -> str:
        """One line: the file, where it went, what was saved and what was lost."""
        if self.lost_exact:
            lost = f"{self.points_lost} points lost"
        elif self.points_lost:
            lost = f"at least {self.points_lost} points lost, maybe more"
        else:
            lost = "an unknown number of points lost"
        if self.lost_ranges:
            shown = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in self.lost_ranges[:5])
            more = ", ..." if len(self.lost_ranges) > 5 else ""
            lost += f" (sequence numbers {shown}{more})"
        text = (
            f"spool file {self.path} was damaged ({self.problem}): moved aside to "
            f"{self.moved_to} ({self.size_bytes} bytes); {self.points_saved} points salvaged "
            f"into a fresh spool, {lost}"
        )
        if not self.cursors_saved and self.points_saved:
            text += "; sink cursors unreadable: every salvaged point is sent to every sink again"
        if self.rejected_saved or self.rejected_lost:
            text += f"; {self.rejected_saved} rejected lines kept"
            text += " (some unreadable)" if self.rejected_lost else ""
        return text


def open_spool(
    path: Path, open_: Callable[[], Spool], last_known: int | None = None
) -> tuple[Spool, SalvageReport | None]:
    """`open_()` the spool at `path`; if it is damaged, salvage it first (`salvage`, which logs
    the one error line) and open the fresh spool. `last_known`: the newest sequence number a
    live spool knew had been committed (counts what lies beyond the readable part)."""
    try:
        return open_(), None
    except SpoolCorruptError as exc:
        report = salvage(path, exc.problem, last_known)
    return open_(), report


def salvage(path: Path, problem: str, last_known: int | None = None) -> SalvageReport:
    """Move the damaged spool at `path` aside and write what can be read of it into a fresh
    spool at `path` (built aside and renamed into place, so a crash never leaves a half-made
    spool where the daemon looks); logs the one error line (`SalvageReport.message`)."""
    size = sum(f.stat().st_size for f in _family(path) if f.exists())
    moved = move_aside(path)
    report = SalvageReport(path, moved, problem, size)
    fresh = _sibling(path, ".salvaging")
    for stale in _family(fresh):
        stale.unlink(missing_ok=True)
    kept = [f for f in _family(moved) if f.exists()]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".salvage-") as scratch:
        src = _open_source(moved, Path(scratch))
        dst = _connect(fresh)
        try:
            _salvage_into(src, dst, report, last_known)
        finally:
            src.close()
            dst.close()
    for made in set(_family(moved)) - set(kept):
        made.unlink(missing_ok=True)  # empty -wal, -shm of the read-only connection
    os.replace(fresh, path)  # closed: its log was checkpointed and removed
    _fsync_dir(path.parent)
    log.error("%s", report.message())
    return report


def move_aside(path: Path) -> Path:
    """Rename `path` (and its -wal, -shm) to `<name>.damaged-<UTC time>`, never over an existing
    file; the log first, so a crash half-way never pairs a stale log with a fresh database."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = _sibling(path, f".damaged-{stamp}")
    n = 0
    while any(f.exists() for f in _family(target)):
        n += 1
        target = _sibling(path, f".damaged-{stamp}-{n}")
    for suffix in (*SIDE_FILES, ""):
        if _sibling(path, suffix).exists():
            os.rename(_sibling(path, suffix), _sibling(target, suffix))
    _fsync_dir(path.parent)
    return target


def _family(path: Path) -> list[Path]:
    """The database file and its side files."""
    return [path, *(_sibling(path, s) for s in SIDE_FILES)]


def _fsync_dir(directory: Path) -> None:
    """Make renames in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the source: the file moved aside, or a repaired scratch copy of it -------------------------


def _open_source(moved: Path, scratch: Path) -> sqlite3.Connection:
    """A read-only connection to what SQLite can read of `moved`: the file itself, or a scratch
    copy with a new header and a re-chained log when those are what is damaged."""
    wal = _sibling(moved, "-wal")
    header_ok = _db_header_ok(moved)
    if header_ok and not (wal.exists() and wal.stat().st_size):
        return _read_only(moved)
    copy = scratch / moved.name
    shutil.copyfile(moved, copy)
    if not header_ok:
        _write_db_header(copy)
    if wal.exists() and wal.stat().st_size:
        shutil.copyfile(wal, _sibling(copy, "-wal"))
        _rechain_wal(_sibling(copy, "-wal"), _page_size(copy))
    return _read_only(copy)


def _read_only(path: Path) -> sqlite3.Connection:
    """Read-only: SQLite neither checkpoints nor removes the log of what it salvages from.
    writable_schema: a file shorter than its header says (truncated) is read up to its end
    rather than refused as a whole."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.execute("PRAGMA writable_schema = ON")
    return conn


def _db_header_ok(path: Path) -> bool:
    with path.open("rb") as f:
        header = f.read(100)
    return len(header) == 100 and header[:16] == _DB_MAGIC and _page_size_field(header) > 0


def _page_size_field(header: bytes) -> int:
    """The page size a database header gives, 0 if it gives none that SQLite allows."""
    (raw,) = struct.unpack(">H", header[16:18])
    return _valid_page_size(65536 if raw == 1 else raw)


def _valid_page_size(size: int) -> int:
    """`size` if SQLite allows it as a page size, else 0."""
    return size if 512 <= size <= 65536 and size & (size - 1) == 0 else 0


def _page_size(path: Path) -> int:
    with path.open("rb") as f:
        return _page_size_field(f.read(100)) or PAGE_SIZE


def _write_db_header(path: Path) -> None:
    """Write a database header over garbage: the spool's page size (or the one the old header
    still gives), WAL mode, UTF-8, this layout; size and free list left to SQLite to work out
    from the file (a database size of 0 is not trusted)."""
    with path.open("rb") as f:
        old = f.read(100)
    page_size = _page_size_field(old.ljust(100, b"\0")) or PAGE_SIZE
    header = struct.pack(
        ">16sHBBBBBB12I20sII",
        _DB_MAGIC,
        1 if page_size == 65536 else page_size,
        2,  # write version: WAL
        2,  # read version: WAL
        0,  # reserved bytes per page
        64,  # max embedded payload fraction (fixed by the format)
        32,  # min embedded payload fraction
        32,  # leaf payload fraction
        1,  # file change counter
        0,  # database size in pages: 0, so SQLite takes the file size
        0,  # first free-list trunk page: none (free pages are only lost space)
        0,  # free-list pages
        1,  # schema cookie
        4,  # schema format
        0,  # default cache size
        0,  # largest root b-tree page (no auto-vacuum)
        1,  # text encoding: UTF-8
        LAYOUT_VERSION,  # user_version
        0,  # incremental vacuum
        0,  # application id
        b"\0" * 20,
        0,  # version-valid-for: differs from the change counter
        sqlite3.sqlite_version_info[0] * 1_000_000 + sqlite3.sqlite_version_info[1] * 1000,
    )
    with path.open("r+b") as f:
        f.write(header)


def _rechain_wal(wal: Path, db_page_size: int) -> None:
    """Rewrite the checksums of the current log's frames (and its header, if damaged) so that
    SQLite reads every one of them instead of stopping at the first that fails.

    The current log's frames are those up to the last one that carries its salts (a log is
    rewritten from its start, so frames left from an earlier one can only follow); when the
    header is garbage, its salts are taken from the first frame.
    """
    data = bytearray(wal.read_bytes())
    if len(data) < WAL_HEADER:
        wal.write_bytes(b"")
        return
    magic, _, page_size = struct.unpack(">III", data[:12])
    if magic not in _WAL_MAGIC or not _valid_page_size(page_size):
        page_size = db_page_size
    frame_size = WAL_FRAME_HEADER + page_size
    frames = (len(data) - WAL_HEADER) // frame_size
    salts = bytes(data[16:24])
    offsets = [WAL_HEADER + i * frame_size for i in range(frames)]
    if magic not in _WAL_MAGIC and offsets:
        salts = bytes(data[WAL_HEADER + 8 : WAL_HEADER + 16])  # a log starts at frame 1
    current = [o for o in offsets if data[o + 8 : o + 16] == salts]
    end = (current[-1] + frame_size) if current else WAL_HEADER
    data[:24] = struct.pack(">IIII8s", 0x377F0682, 3007000, page_size, 0, salts)
    sums = wal_checksum(bytes(data[:24]), "<")
    data[24:32] = struct.pack(">II", *sums)
    for offset in (o for o in offsets if o < end):
        data[offset + 8 : offset + 16] = salts
        frame = bytes(data[offset : offset + 8]) + bytes(
            data[offset + WAL_FRAME_HEADER : offset + frame_size]
        )
        sums = wal_checksum(frame, "<", *sums)
        data[offset + 16 : offset + 24] = struct.pack(">II", *sums)
    wal.write_bytes(bytes(data[:end]))


# -- reading row by row ------------------------------------------------------------------------


def _seek(src: sqlite3.Connection, table: str, key: str, after: int) -> int | None:
    """The smallest `key` above `after` in `table` (None: no more); raises what SQLite raises."""
    row = src.execute(
        f"SELECT {key} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT 1", (after,)
    ).fetchone()
    return row[0] if row else None


def _try_seek(src: sqlite3.Connection, table: str, key: str, after: int) -> tuple[bool, int | None]:
    """(readable, next key) of `_seek`; damage is (False, None), other errors propagate. A key
    at or below `after` is damage too (a garbled page can still parse)."""
    try:
        found = _seek(src, table, key, after)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        return False, None
    if found is not None and (not isinstance(found, int) or found <= after):
        return False, None
    return True, found


def _readable_keys(
    src: sqlite3.Connection, table: str, key: str, skipped: Callable[[], None] = lambda: None
) -> Iterator[int]:
    """Every key of `table` that SQLite can reach, in order. Where a seek fails (a damaged
    b-tree page), probe further keys at doubling distances until one is readable, then narrow
    down the first readable start by bisection: the keys in between are unreachable (`skipped`
    is called)."""
    after = 0
    while True:
        ok, found = _try_seek(src, table, key, after)
        if not ok:
            skipped()
            ok, found = _jump(src, table, key, after)
        if found is None:
            return
        yield found
        after = found


def _jump(src: sqlite3.Connection, table: str, key: str, failed: int) -> tuple[bool, int | None]:
    """From a seek after `failed` that raised: the next key a seek further on can reach."""
    step = 1
    while failed + step < _NO_KEY:
        ok, found = _try_seek(src, table, key, failed + step)
        if ok:
            lo, hi, best = failed, failed + step, found
            while hi - lo > 1:
                mid = (lo + hi) // 2
                ok, at_mid = _try_seek(src, table, key, mid)
                if ok:
                    hi, best = mid, at_mid
                else:
                    lo = mid
            return True, best
        step *= 2
    return False, None


def _salvage_into(
    src: sqlite3.Connection, dst: sqlite3.Connection, report: SalvageReport, last_known: int | None
) -> None:
    """Copy chunks, cursors and rejected lines from `src` into the new spool `dst`, counting.

    The spool reads points by consecutive sequence numbers, so chunks after a lost range are
    renumbered down by the points lost before them, and so are the cursors.
    """
    cursors = _read_cursors(src)
    report.cursors_saved = cursors is not None
    low = min(cursors.values()) if cursors else None  # every sink has every point up to here
    known = [x for x in (_read_sequence(src), last_known) if x is not None]
    high = max(known) if known else None  # the newest point committed
    expected = low  # the last point accounted for (saved or counted lost)
    last_saved = 0
    pending: list[_Chunk] = []
    for last_seq in _readable_keys(src, "chunks", "last_seq"):
        chunk = _read_chunk(src, last_seq)
        if chunk is None:
            continue  # counted through the gap it leaves
        first_seq, points, body, ends = chunk
        if first_seq <= last_saved:
            continue  # overlaps what is kept: garbage in a page that still parses
        if expected is None:
            report.lost_exact = False  # unknown start: the gap before the first chunk
        elif first_seq > expected + 1:
            _lose(report, expected + 1, first_seq - 1)
        pending.append((first_seq - 1 - report.points_lost, points, body, ends))
        report.chunks_saved += 1
        # A chunk some sinks acknowledged in part counts for its points not yet everywhere.
        report.points_saved += max(0, last_seq - max(first_seq - 1, expected or 0))
        expected = last_saved = max(last_seq, expected or 0)
        if len(pending) >= COPY_BATCH:
            _write_chunks(dst, pending)
    _write_chunks(dst, pending)
    if high is None or expected is None:
        report.lost_exact = False
    elif high > expected:
        _lose(report, expected + 1, high)
    lost = report.lost_ranges
    moved = {sink: _renumbered(acked, lost) for sink, acked in (cursors or {}).items()}
    _write_bounds(dst, moved, _renumbered(max(expected or 0, high or 0), lost))
    _copy_rejected(src, dst, report)


def _renumbered(seq: int, lost: list[tuple[int, int]]) -> int:
    """Sequence number `seq` once the `lost` ranges are taken out of the numbering."""
    return seq - sum(max(0, min(b, seq) - a + 1) for a, b in lost)


def _lose(report: SalvageReport, first: int, last: int) -> None:
    report.points_lost += last - first + 1
    report.lost_ranges.append((first, last))


def _read_chunk(
    src: sqlite3.Connection, last_seq: int
) -> tuple[int, int, bytes, bytes | None] | None:
    """(first_seq, points, body, ends) of the chunk ending at `last_seq`, or None when it cannot
    be read or does not hold together (its points do not match its lines)."""
    try:
        row = src.execute(
            "SELECT first_seq, points, body, ends FROM chunks WHERE last_seq = ?", (last_seq,)
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        return None
    if row is None:
        return None
    first_seq, points, body, ends = row
    if not (
        isinstance(first_seq, int)
        and isinstance(points, int)
        and isinstance(body, bytes)
        and points == last_seq - first_seq + 1 >= 1
    ):
        return None
    lines = body.count(b"\n") + 1 if ends is None else len(ends) // 4
    return (first_seq, points, body, ends) if lines == points else None


def _write_chunks(
    dst: sqlite3.Connection, pending: list[tuple[int, int, bytes, bytes | None]]
) -> None:
    """Insert and empty `pending` in one transaction."""
    with _Transaction(dst) as conn:
        for after, points, body, ends in pending:
            _insert_chunk(conn, after, points, body, ends)
    pending.clear()


def _read_cursors(src: sqlite3.Connection) -> dict[str, int] | None:
    """The sinks' cursors, or None when they cannot all be read."""
    try:
        rows = src.execute("SELECT sink, acked_seq FROM cursors").fetchall()
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        return None
    return {sink: acked for sink, acked in rows} or None


def _read_sequence(src: sqlite3.Connection) -> int | None:
    """The newest sequence number the file ever stored, if it can be read."""
    with contextlib.suppress(sqlite3.DatabaseError):
        row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
        return row[0] if row else None
    return None


def _write_bounds(dst: sqlite3.Connection, cursors: dict[str, int], last: int) -> None:
    """Store the cursors, and let numbering continue after `last` (never at or below a
    cursor: new points would count as acknowledged)."""
    with _Transaction(dst) as conn:
        conn.executemany(
            "INSERT INTO cursors (sink, acked_seq) VALUES (?, ?)", list(cursors.items())
        )
        last = max(last, *cursors.values(), 0) if cursors else last
        if conn.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'chunks'").fetchone():
            conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'chunks'", (last,))
        elif last:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('chunks', ?)", (last,))


def _copy_rejected(src: sqlite3.Connection, dst: sqlite3.Connection, report: SalvageReport) -> None:
    """Copy the rejected lines that can be read; note whether some could not."""
    rows = []

    def skipped() -> None:
        report.rejected_lost = True

    try:
        for key in _readable_keys(src, "rejected", "id", skipped):
            row = src.execute(
                "SELECT id, sink, time_ns, reason, line FROM rejected WHERE id = ?", (key,)
            ).fetchone()
            if row is not None:
                rows.append(row)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        report.rejected_lost = True
    with _Transaction(dst) as conn:
        conn.executemany(
            "INSERT INTO rejected (id, sink, time_ns, reason, line) VALUES (?, ?, ?, ?, ?)", rows
        )
    report.rejected_saved = len(rows)

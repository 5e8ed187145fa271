"""The durable queue between polling and writing: line protocol in one SQLite database.

Why SQLite in WAL mode (from the standard library) rather than files of our own:
- a submit is one transaction: once `append` returns, its points are on disk (WAL journal,
  `synchronous=FULL`, so fsync'ed) and survive a kill -9 or a power cut, and a half-written
  submit never becomes visible; a file format of our own would need its own framing, checksums
  and recovery code to get there;
- rows keep their insertion order, so every sink replays in the order points came in;
- WAL lets the writers read while the poller appends, and lets `qkdtel spool rejected` inspect
  and requeue while the daemon runs;
- acknowledged points are deleted by a range delete on the primary key, so a long outage does not
  make the file slower to use.

Layout (`PRAGMA user_version` = LAYOUT_VERSION): `chunks` holds the points not yet acknowledged
by every sink, one row per submit: its lines, UTF-8 and joined by newlines exactly as a write
request carries them, with the sequence numbers of its first and last point. Points are numbered
consecutively across chunks and never renumbered, so a point is addressed by its sequence number
while its lines are stored, read and sent as one block: a batch of whole chunks becomes a request
body by joining blobs, never by splitting and re-joining lines. A chunk is cut into lines only
where lines matter: to isolate the lines a sink rejects, or to send part of a chunk when it does
not fit in a batch. `cursors` holds, per sink, the sequence number of the last point that sink
acknowledged (so an outage of one sink never holds back another, and each sink receives every
point); `rejected` keeps the lines a sink refused as malformed, with the reason, for an operator
to inspect or requeue.

Only deletions at the front ever remove chunks (acknowledged by all, or dropped on overflow), so
sequence numbers are consecutive and counting the spool is `last - first + 1`, with no table
scan. Overflow drops whole chunks, oldest first, and counts exactly the points they held.

Disk: the spool takes at most `spool_max_bytes` (default: the smaller of 1 GiB and half the
space free in spool_dir at start, `qkdtel.spool_space.default_max_bytes`), database and
write-ahead log together. The overflow policy holds the database's pages in use to
`spool_max_bytes - WAL_MAX_BYTES`, measured on the pages SQLite really uses once the chunk is
inserted (in a savepoint, undone if it does not fit), so no size estimate is involved; the log is
held to WAL_MAX_BYTES (4 MiB: a checkpoint every 256 pages, and `journal_size_limit` truncates it
back after one; a single transaction may cross it). With the reserve file (RESERVE_BYTES, 2 MiB)
and the -shm file (32 KiB), the filesystem must offer

    spool_max_bytes + 2 MiB + the largest submit

and `spool_max_points` applies as well, whichever limit comes first (a point takes 70-100 bytes:
the default 2,000,000 points are ~160 MB). A poll's commit writes two 16 KiB pages to the log
(its chunk's leaf and `sqlite_sequence`), ~35 KiB whatever its size: delivery groups the commits
of concurrent polls (bench/README).

A full disk (filled by someone else, or spool_max_bytes above the free space): the first
SQLITE_FULL releases the reserve file (`qkdtel.spool_space`), checkpoints and truncates the log,
and holds the database to the pages its file has, checkpointing every 16 pages so the log
reuses its space; the overflow policy then makes room within the file (drop_oldest: the oldest
chunks go; reject_new: the new points are refused), every point lost counted, and
acknowledgements, deletes and checkpoints commit in the reserve's room. The episode ends once
the filesystem has room for the reserve, a second one and a log at its bound: the reserve is
written again and spool_max_bytes applies again. Should the retry after releasing the reserve
fail as well, the submit is lost (counted) and the spool holds itself to a few pages fewer.

Known limit, not chased: SQLite checks the log frame by frame (checksums) and replays only up to
the last complete commit. Commits whose frames were fsync'ed but that the storage lost or tore
at the log's tail (storage that does not honour fsync, a power cut) are dropped silently at the
next open, as if never committed: "on disk before it counts as collected" is as good as the
storage's fsync.

A spool file of another layout (the one-row-per-point layout of earlier versions, or a newer one)
is refused with `SpoolLayoutError`, never read as if it were this one.

Damage (a truncated file, garbage over the header, a corrupt page, a damaged write-ahead log) is
looked for when the daemon opens the spool: `PRAGMA quick_check` (measured on a spool of 2 M
points, 230 MB: 35 ms with the file in the page cache, 0.35 s cold, so it runs at every start)
and a check of the write-ahead log's header and frame checksums (`_wal_problem`: SQLite silently
ignores a log whose header or a frame's checksum is wrong, and with it every commit after the
damage). During the run, any operation that meets SQLITE_CORRUPT or SQLITE_NOTADB raises
`SpoolCorruptError`; `qkdtel.spool_salvage` moves the file aside, salvages what can be read and
counts what was lost. A spool the daemon may not read or write raises `SpoolAccessError`.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import struct
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from qkdtel.spool_space import (
    RESERVE_BYTES,
    Reserve,
    default_max_bytes,
    files_bytes,
    free_bytes,
    is_disk_full,
)

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.sqlite3"
"""Name of the database inside `collector.spool_dir`."""

LAYOUT_VERSION = 2
"""`PRAGMA user_version` of this layout (the one-row-per-point layout had none, so 0)."""

PAGE_SIZE = 16384
"""Database page size of a new spool: a chunk of a few thousand lines spans tens of pages
rather than hundreds, which makes writing, reading and freeing it cheaper."""

RECENT_MAX_BYTES = 32 << 20
"""Bodies of the newest chunks this process appended that the spool keeps in memory as well,
so that a writer keeping up with the poller sends them without reading them back."""

WAL_AUTOCHECKPOINT_PAGES = 256
"""Pages (4 MiB) the write-ahead log may grow to before SQLite copies it into the database."""

WAL_MAX_BYTES = WAL_AUTOCHECKPOINT_PAGES * PAGE_SIZE
"""`PRAGMA journal_size_limit`: a checkpointed log is truncated back to this, so the log takes
at most this much between checkpoints (plus the one transaction that crosses it)."""

FULL_AUTOCHECKPOINT_PAGES = 16
"""`wal_autocheckpoint` while the disk is full: the log stays within the released reserve."""

_SCHEMA = f"""
PRAGMA user_version = {LAYOUT_VERSION};
CREATE TABLE chunks (
    last_seq INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seq INTEGER NOT NULL,
    points INTEGER NOT NULL CHECK (points >= 1 AND points = last_seq - first_seq + 1),
    ends BLOB,
    body BLOB NOT NULL
);
CREATE TABLE cursors (
    sink TEXT PRIMARY KEY,
    acked_seq INTEGER NOT NULL
);
CREATE TABLE rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    line TEXT NOT NULL
);
"""
# chunks.last_seq is the rowid, so reading from a cursor and deleting up to one are range
# operations on the table's own b-tree. AUTOINCREMENT: inserts give it explicitly, but SQLite
# still records the largest ever used (sqlite_sequence), so sequence numbers continue after the
# spool empties instead of restarting at or below a sink's cursor.
# chunks.ends is NULL when the body's lines are exactly its newline-separated parts; a string
# field may hold a newline, and then `ends` lists where each line ends (native uint32 offsets).
# body is last: reading the other columns never touches the blob's pages.


class SpoolLayoutError(RuntimeError):
    """The spool file was written by another version of qkdtel in another layout."""


class SpoolCorruptError(RuntimeError):
    """The spool file is damaged: SQLite reports it corrupt or not a database, or its
    write-ahead log is damaged. Not a layout problem: the file is moved aside and salvaged
    (`qkdtel.spool_salvage`)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"spool file {path} is damaged: {problem}")
        self.path = path
        self.problem = problem


class SpoolAccessError(RuntimeError):
    """This process may not read or write the spool file or its directory: an operator's fix
    (owner, mode, mount), never a reason to move the file aside."""


_DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_ACCESS_CODES = (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM)


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` is SQLite saying the file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES  # extended codes keep the primary in the low byte
    text = str(exc)
    return "database disk image is malformed" in text or "file is not a database" in text


def _is_access_problem(exc: BaseException) -> bool:
    """Whether `exc` is SQLite refusing to open or write the file (permissions, read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF in _ACCESS_CODES)
    )


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _raises_corrupt(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Spool method decorator: SQLite's corruption errors become `SpoolCorruptError` naming the
    file, so that delivery can salvage the spool instead of failing on a bare DatabaseError."""

    @functools.wraps(method)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise SpoolCorruptError(args[0].path, str(exc)) from exc  # type: ignore[attr-defined]
            raise

    return guarded


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive points read for one sink, oldest first: points `first_seq`..`last_seq`.

    `body` is their line protocol, joined by newlines and UTF-8 encoded (a write request's body);
    `ends`, when not None, gives the end offset of each line in `body` (some line holds a
    newline inside a string field).
    """

    first_seq: int
    last_seq: int
    body: bytes
    ends: array | None = None

    def __len__(self) -> int:
        return self.last_seq - self.first_seq + 1

    @property
    def lines(self) -> list[str]:
        """The points' lines (split only when asked: to isolate rejected lines, in tests)."""
        return [line.decode() for line in _split(self.body, self.ends)]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What `Spool.append` did: points stored, and per sink the points lost to overflow."""

    accepted: int
    dropped: dict[str, int] = field(default_factory=dict)
    discarded: int = 0
    """Distinct points that overflow removed from the spool or refused (for the error log)."""
    skipped: int = 0
    """New points left out before the `accepted` ones (drop_oldest keeps the newest)."""
    limit: str = ""
    """What overflowed when points were lost: `spool_max_points`, `spool_max_bytes`, or
    `disk full`."""


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A line a sink refused as malformed, kept aside with the sink's reason."""

    id: int
    sink: str
    time_ns: int
    reason: str
    line: str


# -- chunks: lines <-> one blob ----------------------------------------------------------------


def _pack(lines: Sequence[str]) -> tuple[bytes, bytes | None]:
    """(body, ends) of a chunk holding `lines` (see the schema for `ends`)."""
    body = "\n".join(lines).encode()
    if not any("\n" in line for line in lines):  # 4x quicker than body.count(b"\n")
        return body, None
    ends, offset = array("I"), -1
    for line in lines:
        offset += 1 + len(line.encode())
        ends.append(offset)
    return body, ends.tobytes()


def _unpack_ends(ends: bytes | None) -> array | None:
    if ends is None:
        return None
    offsets = array("I")
    offsets.frombytes(ends)
    return offsets


def _split(body: bytes, ends: array | None) -> list[bytes]:
    """The lines of a chunk or batch body."""
    if ends is None:
        return body.split(b"\n")
    lines, start = [], 0
    for end in ends:
        lines.append(body[start:end])
        start = end + 1
    return lines


def _part(body: bytes, ends: array | None, skip: int, take: int) -> tuple[bytes, array | None]:
    """(body, ends) of lines `skip` .. `skip + take - 1` of a chunk."""
    if ends is None:
        lines = body.split(b"\n", skip + take)
        return b"\n".join(lines[skip : skip + take]), None
    start = ends[skip - 1] + 1 if skip else 0
    part = array("I", (end - start for end in ends[skip : skip + take]))
    return body[start : ends[skip + take - 1]], part


def _join(parts: list[tuple[bytes, array | None]]) -> tuple[bytes, array | None]:
    """One body (and ends, when a part has them) of consecutive parts."""
    body = b"\n".join(b for b, _ in parts)
    if all(e is None for _, e in parts):
        return body, None
    ends, base = array("I"), 0
    for part_body, part_ends in parts:
        if part_ends is None:
            offset = base - 1
            for line in part_body.split(b"\n"):
                offset += 1 + len(line)
                ends.append(offset)
        else:
            ends.extend(base + end for end in part_ends)
        base += len(part_body) + 1
    return body, ends


# -- the database --------------------------------------------------------------------------------


def _connect(path: Path, create: bool = True, check: bool = False) -> sqlite3.Connection:
    """A connection to the spool at `path`, its layout checked; a missing spool is created when
    `create`, else FileNotFoundError.

    `check`: look for damage first (`_check_integrity`, the daemon's first connection), raising
    `SpoolCorruptError`; a file or directory this process may not use raises `SpoolAccessError`.
    """
    _check_access(path, create)
    if create:
        target, uri = str(path), False
    elif path.exists():
        target, uri = f"{path.resolve().as_uri()}?mode=rw", True
    else:
        raise FileNotFoundError(f"no spool at {path}")
    # Autocommit mode: every transaction is an explicit BEGIN ... COMMIT below.
    try:
        conn = sqlite3.connect(
            target, uri=uri, isolation_level=None, check_same_thread=False, timeout=30.0
        )
    except sqlite3.OperationalError as exc:
        if _is_access_problem(exc):
            raise SpoolAccessError(f"spool file {path}: {exc}") from exc
        raise
    try:
        if check and (problem := _wal_problem(path)):
            # Before any read: SQLite would ignore such a log and show an older database.
            raise SpoolCorruptError(path, problem)
        # Looked at before anything is set: a file this version does not read is left as it is.
        version, tables = _layout(conn)
        if version != LAYOUT_VERSION and not (version == 0 and not tables and create):
            raise SpoolLayoutError(_layout_problem(path, version, tables))
        if check:
            _check_integrity(conn, path)
        # page_size only takes effect on a database that has no page yet.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        with _Transaction(conn):
            # Again under the write lock: another process may have created it meanwhile.
            version, tables = _layout(conn)
            if version == 0 and not tables and create:
                # Statement by statement: executescript would commit the transaction first.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            elif version != LAYOUT_VERSION:
                raise SpoolLayoutError(_layout_problem(path, version, tables))
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_damage(exc):
            raise SpoolCorruptError(path, str(exc)) from exc
        if _is_access_problem(exc):
            raise SpoolAccessError(f"spool file {path}: {exc}") from exc
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def check_spool(path: Path) -> None:
    """Look for damage in the spool at `path` as the daemon does when it starts (without moving
    anything aside): raises `SpoolCorruptError`, `SpoolAccessError`, `SpoolLayoutError`, or
    FileNotFoundError when there is no spool."""
    _connect(path, create=False, check=True).close()


def _check_access(path: Path, create: bool) -> None:
    """Raise `SpoolAccessError` naming the path when this process may not read and write the
    spool (its directory, the file, its -wal and -shm): SQLite would only say "unable to open
    database file" or "attempt to write a readonly database", naming nothing."""
    who = f"uid {os.geteuid()}"
    directory = path.parent
    if create and not directory.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolAccessError(
                f"spool directory {directory} cannot be created by {who}: {exc.strerror}"
            ) from exc
    if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
        raise SpoolAccessError(
            f"spool directory {directory} is not writable by {who}{_why_not(directory)}: SQLite "
            "needs to create its -wal and -shm files there; fix its owner or mode, or set "
            "collector.spool_dir elsewhere"
        )
    for file in (path, _sibling(path, "-wal"), _sibling(path, "-shm")):
        if file.exists() and not os.access(file, os.R_OK | os.W_OK):
            raise SpoolAccessError(
                f"spool file {file} cannot be read and written by {who}{_why_not(file)}: fix "
                "its owner or mode (the daemon's user must own it)"
            )


def _why_not(path: Path) -> str:
    """` (owner uid N, mode 0o...)`, or ` (read-only file system)`."""
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return " (read-only file system)"
    st = path.stat()
    return f" (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:#o})"


def _sibling(path: Path, suffix: str) -> Path:
    """`path` with `suffix` appended to its name (SQLite's -wal and -shm files)."""
    return path.with_name(path.name + suffix)


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Raise `SpoolCorruptError` if `PRAGMA quick_check` finds damage."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        raise SpoolCorruptError(path, "; ".join(str(r[0]) for r in rows[:3]))


WAL_HEADER = 32
WAL_FRAME_HEADER = 24
_WAL_MAGIC = {0x377F0682: "<", 0x377F0683: ">"}  # checksum word order
_WAL_VERSION = 3007000


def wal_checksum(data: bytes, order: str, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    """SQLite's write-ahead log checksum of `data` (a multiple of 8 bytes) from (s0, s1)."""
    words = iter(struct.unpack(f"{order}{len(data) // 4}I", data))
    for a, b in zip(words, words, strict=True):
        s0 = (s0 + a + s1) & 0xFFFFFFFF
        s1 = (s1 + b + s0) & 0xFFFFFFFF
    return s0, s1


def _wal_problem(path: Path) -> str | None:
    """What is wrong with the spool's write-ahead log, if anything. SQLite treats a log with a
    bad header as empty, and stops reading at the first frame whose checksum fails: every
    commit in it, or after that frame, would be lost without a word. Pure-Python checksums:
    0.5 s for a full 4 MiB log, at start and only when a log was left (a clean stop removes
    it)."""
    wal = _sibling(path, "-wal")
    try:
        with wal.open("rb") as f:
            header = f.read(WAL_HEADER)
            if not header:
                return None
            if len(header) < WAL_HEADER:
                return f"write-ahead log {wal} is cut short ({len(header)} bytes)"
            magic, version, page_size = struct.unpack(">III", header[:12])
            if magic not in _WAL_MAGIC or version != _WAL_VERSION:
                return f"write-ahead log {wal} has no valid header (overwritten)"
            order = _WAL_MAGIC[magic]
            sums = wal_checksum(header[:24], order)
            if sums != struct.unpack(">II", header[24:]):
                return f"write-ahead log {wal} has a header with a wrong checksum"
            broken, committed, frame, frame_size = 0, 0, 0, WAL_FRAME_HEADER + page_size
            while len(data := f.read(frame_size)) == frame_size:
                frame += 1
                if data[8:16] != header[16:24]:
                    broken = broken or frame  # a frame left from an earlier log, or garbage
                    continue
                if data[4:8] != b"\0\0\0\0":
                    committed = frame
                if not broken:
                    sums = wal_checksum(data[:8] + data[WAL_FRAME_HEADER:], order, *sums)
                    if sums != struct.unpack(">II", data[16:24]):
                        broken = frame
    except FileNotFoundError:
        return None
    if broken and committed > broken:
        return (
            f"write-ahead log {wal} is damaged at frame {broken} of {committed} committed "
            "(SQLite would silently drop the commits after it)"
        )
    return None


def _layout(conn: sqlite3.Connection) -> tuple[int, set[str]]:
    """(user_version, names of the tables)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return version, {name for (name,) in rows}


def _layout_problem(path: Path, version: int, tables: set[str]) -> str:
    if version == 0 and {"points", "cursors", "rejected"} <= tables:
        what = "was written by an earlier qkdtel, in the one-row-per-point layout"
    elif version == 0:
        what = "is not a qkdtel spool"
    elif version > LAYOUT_VERSION:
        what = f"was written by a newer qkdtel, in spool layout {version}"
    else:
        what = f"is in spool layout {version}"
    what += f" (this qkdtel reads layout {LAYOUT_VERSION} only)"
    return (
        f"spool file {path} {what}: deliver what it holds with the qkdtel version that wrote "
        "it, or move it away to start with an empty spool"
    )


class _Transaction:
    """`with _Transaction(conn):` -- BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on error.

    IMMEDIATE takes the write lock at once, so a concurrent writer (the CLI in another process)
    waits for the busy timeout instead of failing half-way through. `immediate=False` opens a
    read transaction: one consistent snapshot for several SELECTs.
    """

    def __init__(self, conn: sqlite3.Connection, immediate: bool = True) -> None:
        self.conn = conn
        self.begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute(self.begin)
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite rolls back by itself after SQLITE_FULL or an I/O error: a second ROLLBACK
        # would fail and hide the error that matters.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _last_seq(conn: sqlite3.Connection) -> int:
    """Sequence number of the newest point ever stored (0 if none)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
    return row[0] if row else 0


def _insert_chunk(
    conn: sqlite3.Connection, after: int, points: int, body: bytes, ends: bytes | None
) -> int:
    """Store a chunk of `points` lines (`_pack`) as the points after sequence number `after`;
    returns the last one's."""
    last = after + points
    conn.execute(
        "INSERT INTO chunks (last_seq, first_seq, points, ends, body) VALUES (?, ?, ?, ?, ?)",
        (last, after + 1, points, ends, body),
    )
    return last


class Spool:
    """The on-disk queue of one collector, shared by all its sinks.

    Thread-safe: the daemon calls it from worker threads (`asyncio.to_thread`). Changes go
    through one connection, one transaction each, under `_lock`; reads go through a second
    connection under a lock of their own, so a writer reading its next batch never waits for an
    append's fsync.
    """

    @_raises_corrupt
    def __init__(
        self,
        path: Path,
        sinks: Sequence[str],
        max_points: int,
        overflow: Literal["drop_oldest", "reject_new"] = "drop_oldest",
        max_bytes: int | None = None,
    ) -> None:
        _check_access(path, create=True)  # before anything looks into the directory
        self.path = path
        self.max_points = max_points
        self.overflow = overflow
        self.max_bytes = max_bytes or default_max_bytes(path.parent, files_bytes(path))
        # Pages in use the data may take: the write-ahead log has its own share.
        self._budget = max(PAGE_SIZE, self.max_bytes - WAL_MAX_BYTES)
        self._cap = self._budget
        self._full_since: float | None = None
        self._reserve = Reserve(path.parent)
        if self._reserve.held and free_bytes(path.parent) < RESERVE_BYTES:
            self._reserve.release()  # starting on a full disk: the spool needs room to open
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        # last_seq -> (body, ends) of chunks appended by this process and still spooled, oldest
        # first (RECENT_MAX_BYTES); changed under `_lock`, looked up without it.
        self._recent: dict[int, tuple[bytes, bytes | None]] = {}
        self._recent_bytes = 0
        self._conn = _connect(path, check=True)
        try:
            self._reader = _connect(path)
        except BaseException:
            self._conn.close()
            raise
        for conn in (self._conn, self._reader):
            conn.execute(f"PRAGMA journal_size_limit = {WAL_MAX_BYTES}")
        self._page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        with self._lock:
            self._first = self._on_full_retry(lambda: self._open_cursors(sinks))
        if not self._reserve.restore(RESERVE_BYTES + WAL_MAX_BYTES):
            self._enter_full()

    def _open_cursors(self, sinks: Sequence[str]) -> int:
        """Load the sinks' cursors, forget removed sinks, start new ones at the oldest point;
        returns the first sequence number left (caller holds `_lock`)."""
        with _Transaction(self._conn) as conn:
            stored = dict(conn.execute("SELECT sink, acked_seq FROM cursors").fetchall())
            self._first, self._last = self._bounds(conn)
            for gone in sorted(set(stored) - set(sinks)):
                lost = max(0, self._last - stored[gone])
                conn.execute("DELETE FROM cursors WHERE sink = ?", (gone,))
                if lost:
                    log.warning(
                        "sink %s is no longer configured: its %d spooled points will not be sent",
                        gone,
                        lost,
                    )
            # A new sink starts at the oldest point still spooled: it receives all of them.
            self._cursors = {s: stored.get(s, self._first - 1) for s in sinks}
            conn.executemany(
                "INSERT OR REPLACE INTO cursors (sink, acked_seq) VALUES (?, ?)",
                list(self._cursors.items()),
            )
            return self._prune(conn, self._cursors)

    def _remember(self, last_seq: int, body: bytes, ends: bytes | None) -> None:
        """Keep a committed chunk's body in memory (caller holds `_lock`)."""
        self._recent[last_seq] = (body, ends)
        self._recent_bytes += len(body)
        while self._recent_bytes > RECENT_MAX_BYTES:
            self._forget(next(iter(self._recent)))

    def _forget_before(self, first: int) -> None:
        """Drop the remembered chunks that end before sequence number `first` (gone from the
        spool); caller holds `_lock`."""
        while self._recent and (oldest := next(iter(self._recent))) < first:
            self._forget(oldest)

    def _forget(self, last_seq: int) -> None:
        body, _ = self._recent.pop(last_seq)
        self._recent_bytes -= len(body)

    @staticmethod
    def _bounds(conn: sqlite3.Connection) -> tuple[int, int]:
        """(first, last) sequence number spooled; (next, next - 1) when empty."""
        # Two queries, each answered from one end of the primary key.
        first = conn.execute("SELECT first_seq FROM chunks ORDER BY last_seq LIMIT 1").fetchone()
        if first is None:
            last = _last_seq(conn)
            return last + 1, last
        return first[0], conn.execute("SELECT max(last_seq) FROM chunks").fetchone()[0]

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._conn.close()
            self._recent.clear()
            self._recent_bytes = 0

    # -- the poller's side -------------------------------------------------------------------

    @_raises_corrupt
    def append(self, lines: Sequence[str]) -> AppendResult:
        """Store `lines` durably as one chunk, applying the overflow policy; returns what was
        kept and what was lost.

        The policy holds for points (`max_points`) and bytes (`max_bytes`, or the size the file
        had when the disk became full): drop_oldest drops whole chunks, the oldest first, as
        many as it takes to make room (and keeps the newest of `lines` if they alone do not
        fit); reject_new keeps as many of `lines` as fit, the first ones. When even that cannot
        be committed (the disk is full beyond the reserve), `lines` are lost and counted.
        """
        if not lines:
            return AppendResult(0)
        with self._lock:
            self._check_space()
            try:
                return self._append(lines)
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
            self._enter_full()
            try:
                return self._append(lines)
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
            self._tighten()
            lost = len(lines)
            return AppendResult(0, dict.fromkeys(self._cursors, lost), lost, lost, "disk full")

    def _append(self, lines: Sequence[str]) -> AppendResult:
        newest = self.overflow == "drop_oldest"
        with _Transaction(self._conn) as conn:
            self._first, self._last = self._bounds(conn)
            held = self._last - self._first + 1
            limit = "spool_max_points" if held + len(lines) > self.max_points else ""
            keep = min(len(lines), self.max_points if newest else max(0, self.max_points - held))
            cut = self._first - 1
            if newest and held + keep > self.max_points:
                cut = self._oldest_through(conn, cut, held + keep - self.max_points, 0)
                self._drop_through(conn, cut)
            step = 0
            while True:
                part = lines[len(lines) - keep :] if newest else lines[:keep]
                body, ends = _pack(part) if part else (b"", None)
                if self._fits(conn, len(part), body, ends):
                    break
                limit = "disk full" if self._full_since is not None else "spool_max_bytes"
                if newest and cut < self._last:
                    # Whole chunks again, twice as many bytes at each turn: the new chunk may
                    # fit where the dropped ones were, or need a page SQLite frees only once
                    # every chunk on it is gone.
                    step = max(2 * step, len(body))
                    cut = self._oldest_through(conn, cut, 0, step)
                    self._drop_through(conn, cut)
                elif keep:
                    keep //= 2
                else:
                    break
            last = self._last + len(part)
        # Published once committed: no one sees points (or cursors) a rollback would take back.
        dropped = {s: len(lines) - keep + max(0, cut - a) for s, a in self._cursors.items()}
        discarded = len(lines) - keep + max(0, cut - self._first + 1)
        if cut >= self._first:
            self._cursors = {s: max(a, cut) for s, a in self._cursors.items()}
            self._first = cut + 1
            self._forget_before(self._first)
        if part:
            self._remember(last, body, ends)
        self._last = last
        skipped = len(lines) - keep if newest else 0
        dropped = {s: n for s, n in dropped.items() if n}
        return AppendResult(keep, dropped, discarded, skipped, limit if discarded else "")

    def _fits(self, conn: sqlite3.Connection, points: int, body: bytes, ends: bytes | None) -> bool:
        """Insert the chunk after `self._last` if the spool then keeps to its byte limit (the
        pages SQLite really uses, so no estimate); returns whether it did."""
        conn.execute("SAVEPOINT fit")
        if points:
            _insert_chunk(conn, self._last, points, body, ends)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        if self._full_since is None:
            pages -= conn.execute("PRAGMA freelist_count").fetchone()[0]
        fits = pages * self._page_size <= self._cap
        if not fits:
            conn.execute("ROLLBACK TO fit")
        conn.execute("RELEASE fit")
        return fits

    @staticmethod
    def _oldest_through(conn: sqlite3.Connection, after: int, points: int, size: int) -> int:
        """The last sequence number of the oldest whole chunks after `after` that hold at least
        `points` points and `size` bytes (at least one chunk; all of them if need be)."""
        cut, freed, freed_bytes = after, 0, 0
        rows = conn.execute(
            "SELECT last_seq, points, length(body) + ifnull(length(ends), 0) FROM chunks"
            " WHERE last_seq > ? ORDER BY last_seq",
            (after,),
        )
        try:
            for last_seq, held, held_bytes in rows:
                cut, freed, freed_bytes = last_seq, freed + held, freed_bytes + held_bytes
                if freed >= points and freed_bytes >= size:
                    break
        finally:
            rows.close()
        return cut

    def _drop_through(self, conn: sqlite3.Connection, cut: int) -> None:
        """Delete the chunks up to sequence number `cut` and move the cursors past them."""
        conn.execute("DELETE FROM chunks WHERE last_seq <= ?", (cut,))
        conn.executemany(
            "UPDATE cursors SET acked_seq = ? WHERE sink = ?",
            [(max(acked, cut), sink) for sink, acked in self._cursors.items()],
        )

    # -- a full disk ---------------------------------------------------------------------------

    def _enter_full(self) -> None:
        """SQLite reported a full disk (caller holds `_lock`): release the reserve, hold the
        data to the pages the file has, and checkpoint the log so it gives its space back; the
        caller then retries once."""
        size = self._conn.execute("PRAGMA page_count").fetchone()[0] * self._page_size
        if self._full_since is None:
            self._full_since = time.monotonic()
            self._cap = size  # the file as it is: it may not grow
            # Frequent checkpoints: the log then reuses its first frames instead of growing.
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {FULL_AUTOCHECKPOINT_PAGES}")
            log.warning(
                "spool %s: disk full (%d bytes free): the spool keeps to the %d bytes it has,"
                " overflow=%s decides what goes, until space is back",
                self.path,
                free_bytes(self.path.parent),
                self._cap,
                self.overflow,
            )
        self._reserve.release()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise

    def _check_space(self) -> None:
        """End a disk-full episode once the reserve could be written again (caller holds
        `_lock`)."""
        if self._full_since is None or not self._reserve.restore(RESERVE_BYTES + WAL_MAX_BYTES):
            return
        log.warning(
            "spool %s: disk space is back (%d bytes free) after %.0f s: spool_max_bytes=%d again",
            self.path,
            free_bytes(self.path.parent),
            time.monotonic() - self._full_since,
            self.max_bytes,
        )
        self._full_since, self._cap = None, self._budget
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")

    def _tighten(self) -> None:
        """Even the retry met a full disk: hold the spool to a few pages less than its file
        (caller holds `_lock`)."""
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._cap = max(self._page_size, min(self._cap, pages * self._page_size))
        self._cap -= 4 * self._page_size

    def _on_full_retry(self, action: Callable[[], int]) -> int:
        """`action()`, once more after `_enter_full` if it met a full disk (caller holds
        `_lock`)."""
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
        self._enter_full()
        return action()

    # -- a writer's side ---------------------------------------------------------------------

    @_raises_corrupt
    def read(self, sink: str, limit: int, after: int | None = None) -> Batch | None:
        """The oldest points `sink` has not acknowledged, at most `limit`; None if none.

        `after`: start after this sequence number rather than after the sink's cursor (a writer
        reading its next batch while the current one is in flight). Whole chunks are taken while
        they fit; only a chunk that does not fit in an empty batch, or that the cursor has
        entered, is cut.
        """
        start = self._cursors[sink] if after is None else max(self._cursors[sink], after)
        plan: list[tuple[int, int, int, int]] = []  # (first_seq, last_seq, skip, take) per chunk
        taken = 0
        chunks: dict[int, tuple[bytes, bytes | None]] = {}
        with self._read_lock, _Transaction(self._reader, immediate=False) as conn:
            rows = conn.execute(
                "SELECT last_seq, first_seq FROM chunks WHERE last_seq > ? ORDER BY last_seq",
                (start,),
            )
            try:
                for last_seq, first_seq in rows:
                    skip = max(0, start - first_seq + 1)
                    take = last_seq - first_seq + 1 - skip
                    if taken + take > limit:
                        if taken:
                            break
                        take = limit
                    plan.append((first_seq, last_seq, skip, take))
                    taken += take
                    if taken >= limit or take < last_seq - first_seq + 1 - skip:
                        break
            finally:
                rows.close()
            if not plan:
                return None
            missing = []
            for _, last_seq, _, _ in plan:
                remembered = self._recent.get(last_seq)
                if remembered is None:
                    missing.append(last_seq)
                else:
                    chunks[last_seq] = remembered
            if missing:
                rows = conn.execute(
                    "SELECT last_seq, body, ends FROM chunks WHERE last_seq BETWEEN ? AND ?",
                    (missing[0], missing[-1]),
                )
                chunks.update((last_seq, (body, ends)) for last_seq, body, ends in rows)
        parts: list[tuple[bytes, array | None]] = []
        for first_seq, last_seq, skip, take in plan:
            body, ends = chunks[last_seq]
            offsets = _unpack_ends(ends)
            if skip or take < last_seq - first_seq + 1:
                parts.append(_part(body, offsets, skip, take))
            else:
                parts.append((body, offsets))
        body, offsets = parts[0] if len(parts) == 1 else _join(parts)
        first = plan[0][0] + plan[0][2]
        return Batch(first, first + taken - 1, body, offsets)

    @_raises_corrupt
    def refresh(self) -> None:
        """Take in points another process (`qkdtel spool rejected --requeue`) appended."""
        with self._lock:
            self._first, self._last = self._bounds(self._conn)

    @_raises_corrupt
    def ack(
        self,
        sink: str,
        batch: Batch,
        rejected: Sequence[tuple[str, str]] = (),
        counted: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int]:
        """Record that `sink` has dealt with `batch`: written, or refused as `(line, reason)`.

        Returns (points written, points rejected) that are still counted for this sink: points of
        the batch that overflow dropped while it was in flight were already counted as dropped.
        `counted`, when given, receives the same two numbers once the acknowledgement is
        committed and before `pending` shows it, so that whoever sees the points gone from
        `pending` also sees them counted.
        """
        now = time.time_ns()
        with self._lock:
            acked = self._cursors[sink]
            fresh = max(0, batch.last_seq - max(acked, batch.first_seq - 1))
            cursors = {**self._cursors, sink: max(acked, batch.last_seq)}
            first = self._on_full_retry(lambda: self._commit_ack(sink, rejected, now, cursors))
            refused = min(len(rejected), fresh)
            if counted is not None:
                counted(fresh - refused, refused)
            if batch.last_seq > acked:
                self._cursors, self._first = cursors, first
                self._forget_before(first)
        return fresh - refused, refused

    def _commit_ack(
        self,
        sink: str,
        rejected: Sequence[tuple[str, str]],
        now: int,
        cursors: dict[str, int],
    ) -> int:
        """One acknowledgement's transaction; returns the first sequence number left."""
        with _Transaction(self._conn) as conn:
            if rejected:
                conn.executemany(
                    "INSERT INTO rejected (sink, time_ns, reason, line) VALUES (?, ?, ?, ?)",
                    [(sink, now, reason, line) for line, reason in rejected],
                )
            if cursors[sink] > self._cursors[sink]:
                conn.execute(
                    "UPDATE cursors SET acked_seq = ? WHERE sink = ?", (cursors[sink], sink)
                )
                return self._prune(conn, cursors)
        return self._first

    def _prune(self, conn: sqlite3.Connection, cursors: dict[str, int]) -> int:
        """Delete the chunks every sink has acknowledged in full; returns the first sequence
        number left (`self._first` is the caller's to update once committed)."""
        done = min(cursors.values(), default=self._last)
        if done < self._first:
            return self._first
        conn.execute("DELETE FROM chunks WHERE last_seq <= ?", (done,))
        row = conn.execute("SELECT first_seq FROM chunks ORDER BY last_seq LIMIT 1").fetchone()
        return row[0] if row else self._last + 1

    # -- accounting ----------------------------------------------------------------------------

    def cursor(self, sink: str) -> int:
        """Sequence number of the last point `sink` acknowledged."""
        return self._cursors[sink]

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest point spooled (as of the last append or refresh)."""
        return self._last

    def pending(self, sink: str) -> int:
        """Points waiting for `sink` (as of the last append or refresh)."""
        return max(0, self._last - self._cursors[sink])

    def size(self) -> int:
        """Points held in the spool (as of the last append or refresh)."""
        return max(0, self._last - self._first + 1)

    @property
    def disk_full(self) -> bool:
        """Whether the spool is in a disk-full episode (holding to the size it had)."""
        return self._full_since is not None

    def bytes_on_disk(self) -> int:
        """Bytes the spool's files take now: database, write-ahead log, shared memory."""
        return files_bytes(self.path)

    def free_bytes(self) -> int:
        """Bytes free on the spool's filesystem."""
        return free_bytes(self.path.parent)


# -- the rejected lines, for the CLI (works while the daemon runs: WAL) ----------------------


@dataclass(frozen=True)
class SinkBacklog:
    """One sink's share of the spool: points it has not acknowledged, and the timestamp of
    the oldest of them (None when none wait)."""

    sink: str
    pending: int
    oldest_ns: int | None
    rejected: int


@dataclass(frozen=True)
class SpoolStatus:
    """What `qkdtel spool status` shows: points held, each sink's backlog, bytes on disk."""

    points: int
    sinks: list[SinkBacklog]
    bytes_on_disk: int


def _line_time_ns(line: bytes) -> int | None:
    """The timestamp of a line-protocol line (its last token; every spooled line has one)."""
    token = line.rstrip().rsplit(b" ", 1)[-1]
    return int(token) if token.isdigit() else None


def spool_status(path: Path) -> SpoolStatus:
    """The spool's backlog per sink, read in one read transaction (WAL: while the daemon
    writes), changing nothing."""
    conn = _connect_read_only(path)
    try:
        with _Transaction(conn, immediate=False):
            first, last = Spool._bounds(conn)
            cursors = conn.execute("SELECT sink, acked_seq FROM cursors ORDER BY sink").fetchall()
            rejected = dict(conn.execute("SELECT sink, count(*) FROM rejected GROUP BY sink"))
            sinks = []
            for sink, acked in cursors:
                pending = max(0, last - max(acked, first - 1))
                oldest = _point_time_ns(conn, max(acked + 1, first)) if pending else None
                sinks.append(SinkBacklog(sink, pending, oldest, rejected.get(sink, 0)))
    finally:
        conn.close()
    return SpoolStatus(max(0, last - first + 1), sinks, files_bytes(path))


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the spool at `path` (no lock taken, nothing set: a look
    while the daemon runs), its layout checked."""
    if not path.exists():
        raise FileNotFoundError(f"no spool at {path}")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
        version, tables = _layout(conn)
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise SpoolCorruptError(path, str(exc)) from exc
        raise SpoolAccessError(f"spool file {path}: {exc}") from exc
    if version != LAYOUT_VERSION:
        conn.close()
        raise SpoolLayoutError(_layout_problem(path, version, tables))
    return conn


def _point_time_ns(conn: sqlite3.Connection, seq: int) -> int | None:
    """The timestamp of the spooled point numbered `seq`."""
    row = conn.execute(
        "SELECT first_seq, ends, body FROM chunks WHERE last_seq >= ? ORDER BY last_seq LIMIT 1",
        (seq,),
    ).fetchone()
    if row is None:
        return None
    first_seq, ends, body = row
    return _line_time_ns(_split(body, _unpack_ends(ends))[seq - first_seq])


def list_rejected(path: Path, sink: str | None = None) -> list[RejectedLine]:
    """Every line kept aside as rejected, oldest first, optionally of one sink only."""
    conn = _connect(path, create=False)
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
    conn = _connect(path, create=False)
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
            if moved:
                body, ends = _pack([line for _, line in moved])
                _insert_chunk(conn, _last_seq(conn), len(moved), body, ends)
            conn.executemany("DELETE FROM rejected WHERE id = ?", [(r[0],) for r in moved])
        return len(moved)
    finally:
        conn.close()

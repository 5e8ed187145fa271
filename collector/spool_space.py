"""Disk space around the spool: its default byte budget, free space, and a reserve for full disks.

Why a reserve file: in WAL mode every change of the spool, even one that frees space (deleting
the oldest chunks for drop_oldest, moving a sink's cursor after a write, a checkpoint), first
appends frames to the write-ahead log, so on a filesystem with no byte free the spool could not
even make room for itself. The spool therefore keeps `RESERVE_BYTES` of real, allocated blocks in
`RESERVE_FILE` next to the database while the disk has room; the first SQLITE_FULL deletes it,
which gives SQLite the room to drop, acknowledge and checkpoint, and it is written again once the
filesystem has room for it, a second reserve and a write-ahead log at its bound (the disk-full
episode is then over: measuring less would count the log's own checkpointed space as "space
back" and end the episode only to start it again).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_FILE = "spool.reserve"
"""Name of the reserve file inside `collector.spool_dir`."""

RESERVE_BYTES = 2 << 20
"""Size of the reserve: room for a few hundred write-ahead-log frames (deletes, acknowledgements,
a checkpoint) on a disk that is otherwise full."""

DEFAULT_MAX_BYTES = 1 << 30
"""Cap of the default `spool_max_bytes` (1 GiB: about 15 M points of ~70 bytes)."""

MIN_MAX_BYTES = 8 << 20
"""Smallest `spool_max_bytes`: the write-ahead log bound (4 MiB) and as much again for data."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's "database or disk is full" (SQLITE_FULL) or an ENOSPC."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF == sqlite3.SQLITE_FULL
        return "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still write on the filesystem of `directory`."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def files_bytes(database: Path) -> int:
    """Bytes the SQLite database at `database` takes on disk, with its -wal and -shm files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            total += database.with_name(database.name + suffix).stat().st_blocks * 512
    return total


def default_max_bytes(directory: Path, held: int) -> int:
    """The default `spool_max_bytes`: the smaller of DEFAULT_MAX_BYTES and half of what the
    spool could use at start (free space plus the `held` bytes its files already take), so a
    spool never fills its filesystem by itself; never below MIN_MAX_BYTES."""
    existing = next(d for d in (directory, *directory.parents) if d.exists())  # before mkdir
    usable = shutil.disk_usage(existing).free + held
    return max(MIN_MAX_BYTES, min(DEFAULT_MAX_BYTES, usable // 2))


class Reserve:
    """The reserve file of a spool directory (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / RESERVE_FILE

    @property
    def held(self) -> bool:
        """Whether the reserve file is in place."""
        return self.path.exists()

    def release(self) -> bool:
        """Delete the reserve file; returns whether there was one to free."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.info("spool disk full: released the %d-byte reserve %s", RESERVE_BYTES, self.path)
        return True

    def restore(self, spare: int) -> bool:
        """Write the reserve file again if the filesystem has room for it and `spare` bytes
        more; returns whether the reserve is in place."""
        if self.held:
            return True
        if free_bytes(self.path.parent) < RESERVE_BYTES + spare:
            return False
        partial = self.path.with_suffix(".partial")
        try:
            with open(partial, "wb", buffering=0) as file:
                _allocate(file.fileno(), RESERVE_BYTES)
                os.fsync(file.fileno())
            partial.rename(self.path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if not is_disk_full(exc):
                raise
            return False
        return True


def _allocate(fd: int, size: int) -> None:
    """Give the file `size` bytes of allocated blocks, not a sparse file: deleting it must give
    real space back. posix_fallocate where the filesystem has it, written zeros elsewhere."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    zeros = bytes(1 << 20)
    for offset in range(0, size, len(zeros)):
        os.write(fd, zeros[: size - offset])

"""One daemon per spool: an advisory lock held for the daemon's whole life.

Two daemons on one spool would both deliver its points (every point written twice) and race
on its cursors. `qkdtel run` therefore takes an exclusive `flock` on `<spool_dir>/daemon.lock`
before it opens the spool, and keeps it until it exits; the kernel drops it when the process
dies, however it dies, so a crash never leaves a stale lock behind. The file holds the PID of
the holder, for the error a second daemon prints. Commands that only look (`qkdtel spool
rejected`, `spool check`) never take it: SQLite's own locking keeps them safe beside the daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "daemon.lock"


class SpoolLockedError(RuntimeError):
    """Another daemon holds the spool; the message names the spool and that daemon's PID."""


class SpoolLock:
    """The exclusive lock on a spool directory; `acquire()` then `release()` (or `with`)."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.path = spool_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; raise `SpoolLockedError` naming the holder if taken."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise SpoolLockedError(
                f"spool {self.spool_dir} is in use by another qkdtel daemon"
                f" ({f'PID {holder}' if holder else 'PID unknown'}, lock {self.path});"
                " stop it first, or give this one another collector.spool_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the file stays: removing it would race with a starting daemon)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> SpoolLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The PID the holder wrote, if the file holds one."""
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None

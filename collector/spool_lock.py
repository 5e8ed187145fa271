"""One daemon per spool: an advisory lock held for the daemon's whole life.

Two daemons on one spool would both deliver its points (every point written twice) and race
on its cursors. `qkdtel run` therefore takes an exclusive `flock` on the spool directory itself
before it opens the spool, and keeps it until it exits; the kernel drops it when the process
dies, however it dies, so a crash never leaves a stale lock behind. Locking the directory (not
a lock file in it) creates nothing: a spool the daemon may not use is refused by the spool's own
checks with the directory as it was. The holder's PID, for the error a second daemon prints,
comes from the kernel's table of locks (/proc/locks). Commands that only look (`qkdtel spool
rejected`, `spool check`) never take it: SQLite's own locking keeps them safe beside the daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")


class SpoolLockedError(RuntimeError):
    """Another daemon holds the spool; the message names the spool and that daemon's PID."""


class SpoolLock:
    """The exclusive lock on a spool directory; `acquire()` then `release()` (or `with`)."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; raise `SpoolLockedError` naming the holder if taken."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.spool_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_pid(self.spool_dir)
            os.close(fd)
            raise SpoolLockedError(
                f"spool {self.spool_dir} is in use by another qkdtel daemon"
                f" ({f'PID {holder}' if holder else 'PID unknown'});"
                " stop it first, or give this one another collector.spool_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> SpoolLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(directory: Path) -> int | None:
    """PID of the process holding a flock on `directory`, from /proc/locks (Linux), if known.

    A line reads `1: FLOCK  ADVISORY  WRITE 4242 fe:00:2214214 0 EOF`: the PID, then the
    device (major:minor, hex) and inode of the locked file.
    """
    with contextlib.suppress(OSError):
        st = os.stat(directory)
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in PROC_LOCKS.read_text().splitlines():
            words = line.split()
            if len(words) >= 6 and words[1] == "FLOCK" and words[5] == ident:
                return int(words[4])
    return None

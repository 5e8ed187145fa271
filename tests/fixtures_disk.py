"""A small filesystem a test can fill up: a real tmpfs mount, or an injected ENOSPC without root.

`SmallDisk.fill()` takes every free byte (a filler file written until ENOSPC), `free()` gives it
back. As root (here and in CI) the disk is a tmpfs of its own, mounted for the test and unmounted
after it: SQLite meets a real full filesystem. Where mounting is impossible (not root, no tmpfs),
the full disk is INJECTED instead (`SmallDisk._inject`); `real` says which one a test got.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qkdtel import spool as spool_module
from qkdtel import spool_space
from qkdtel.spool_space import RESERVE_FILE


class SmallDisk:
    """A directory on a small filesystem that can be filled and freed."""

    def __init__(self, path: Path, real: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.real = real
        self.full = False
        self._filler = path / "filler"
        if not real:
            self._inject(monkeypatch)

    def fill(self) -> None:
        """Take every free byte of the filesystem."""
        self.full = True
        if not self.real:
            return
        with open(self._filler, "ab", buffering=0) as file, contextlib.suppress(OSError):
            while True:  # until ENOSPC
                file.write(b"\0" * (1 << 20))
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        """Give the filler's space back."""
        self.full = False
        self._filler.unlink(missing_ok=True)

    def _inject(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a real small filesystem: INJECTED ENOSPC -- while the disk is "full", free
        space reads 0 and commits fail with SQLITE_FULL until the spool releases its reserve
        file (whose blocks a real full disk would then reuse); the spool's code paths are the
        ones a real full disk takes: SQLITE_FULL from COMMIT, statvfs."""
        disk = self
        commit = spool_module._Transaction.__exit__

        def exit_or_full(self, exc_type, exc, tb) -> None:
            if disk.full and exc_type is None and any(disk.path.rglob(RESERVE_FILE)):
                self._rollback()
                full = sqlite3.OperationalError("database or disk is full")
                full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
                raise full
            commit(self, exc_type, exc, tb)

        real_free = spool_space.free_bytes

        def free_bytes(directory: Path) -> int:
            return 0 if disk.full else real_free(directory)

        monkeypatch.setattr(spool_module._Transaction, "__exit__", exit_or_full)
        monkeypatch.setattr(spool_space, "free_bytes", free_bytes)
        monkeypatch.setattr(spool_module, "free_bytes", free_bytes)


@contextlib.contextmanager
def small_disk(root: Path, size: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    """A tmpfs of `size` (e.g. "32m") mounted under `root`, or the injected fallback."""
    path = root / "disk"
    path.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield SmallDisk(path, mounted, monkeypatch)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)

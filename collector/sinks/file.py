"""The embedded local store: line-protocol files, for sites with no InfluxDB configured.

Files are named `qkdtel-<UTC time>-<n>.lp` under the sink's `path` (their names sort in the order
they were written), hold plain line protocol with nanosecond timestamps, and are rotated once
they pass `rotate_bytes`. Each batch is flushed and fsync'ed before the spool lets it go.

Each file starts with the two lines InfluxDB 1.x's `influx -import` needs (`# DML`, `# CONTEXT-
DATABASE: <database>`); to line protocol they are comments, so every loader takes the files
as written:
- InfluxDB 1.x (the database must exist: `influx -execute 'CREATE DATABASE qkdtel'`):
      influx -import -path=qkdtel-20250101T000000.000000Z-0.lp -precision=ns
- InfluxDB 2.x / 3.x:
      influx write --bucket qkdtel --precision ns --file qkdtel-20250101T000000.000000Z-0.lp
  (repeat `--file` for several files).

A crash after a batch reached the file but before the spool recorded it means the batch is
written again at the next start: the line then appears twice, which InfluxDB stores as one point
(same series and timestamp). A line cut short by the crash is trimmed off at the next start.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from qkdtel.config import FileSink
from qkdtel.sinks.base import RetryableWriteError, SinkWriter

PATTERN = "qkdtel-*.lp"


def _fsync_dir(path: Path) -> None:
    """Make a file's creation or truncation durable (fsync of the file alone does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _trim_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline (it is replayed from the spool)."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        chunk = 64 * 1024
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            data = f.read(end - start)
            if end == size and data.endswith(b"\n"):
                return
            newline = data.rfind(b"\n")
            if newline != -1:
                f.truncate(start + newline + 1)
                os.fsync(f.fileno())
                return
            end = start
        f.truncate(0)
        os.fsync(f.fileno())


class FileWriter(SinkWriter):
    """Appends batches to the current file, rotating it by size."""

    def __init__(self, sink: FileSink) -> None:
        self.name = sink.name
        self.directory = sink.path
        self.rotate_bytes = sink.rotate_bytes
        self.header = f"# DML\n# CONTEXT-DATABASE: {sink.database}\n".encode()
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.directory.glob(PATTERN))
        if existing:
            _trim_torn_tail(existing[-1])
        self._file = self._new_file()

    @property
    def current(self) -> Path:
        """The file being written."""
        return Path(self._file.name)

    def _new_file(self) -> io.BufferedWriter:
        # One clock reading for both parts: two could straddle a second and name this file
        # before one written earlier in the same second.
        now_ns = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns // 1_000_000_000))
        micros = now_ns // 1000 % 1_000_000
        for n in range(1_000_000):
            path = self.directory / f"qkdtel-{stamp}.{micros:06d}Z-{n}.lp"
            try:
                handle = path.open("xb")
            except FileExistsError:
                continue
            handle.write(self.header)
            handle.flush()
            os.fsync(handle.fileno())
            _fsync_dir(self.directory)
            return handle
        raise RetryableWriteError(f"sink {self.name}: cannot create a new file in {self.directory}")

    def write(self, body: bytes) -> None:
        handle = self._file
        size = handle.tell()
        try:
            if size > len(self.header) and size + len(body) + 1 > self.rotate_bytes:
                handle.close()
                self._file = handle = self._new_file()
                size = handle.tell()
            handle.write(body)
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            # Never leave half a batch behind: the next batch would be glued to a torn line.
            try:
                handle.seek(size)
                handle.truncate(size)
            except (OSError, ValueError):
                pass
            raise RetryableWriteError(f"sink {self.name}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._file.close()

"""Processes and ports, as every benchmark needs them (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads) so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def free_tcp_port() -> int:
    """A TCP port free on loopback right now (the child about to listen on it takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(process: subprocess.Popen, port: int, what: str, timeout: float = 30) -> None:
    """Return once `process` accepts connections on loopback `port`; SystemExit naming `what`
    when it exits or `timeout` seconds pass first (a benchmark cannot go on without it)."""
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start listening on port {port}")
        time.sleep(0.05)

"""`python -m qkdtel.sims ...` as a child process, as an operator runs it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SIMS = [sys.executable, "-m", "qkdtel.sims"]


def start(args: list[str], ready: Path, log: Path) -> subprocess.Popen:
    """`qkdtel sims ARGS` serving, once `ready` exists (its output in `log`)."""
    with log.open("wb") as out:
        process = subprocess.Popen([*SIMS, *args], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"sims {args[0]} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen) -> int:
    """SIGTERM, as Ctrl-C or a service manager stops it; the exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=10)


def refused(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`qkdtel sims ARGS` run to its end (bad arguments: exit code 2 and a message)."""
    return subprocess.run([*SIMS, *args], capture_output=True, text=True, timeout=30)

"""One daemon per spool: a second `qkdtel run` on the same spool is refused (exit 2, naming the
spool and the first daemon's PID), while the read-only `qkdtel spool` commands stay allowed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qkdtel.spool_lock import holder_pid
from tests.collector_run import collector_document


def qkdtel(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def wait_for_lock(spool_dir: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until the daemon holds its lock on the spool directory (as the kernel reports it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if spool_dir.exists() and holder_pid(spool_dir) == proc.pid:
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    raise AssertionError(f"PID {proc.pid} never locked {spool_dir}")


def test_second_daemon_on_the_same_spool_is_refused(tmp_path):
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(yaml.safe_dump(collector_document(tmp_path, [])))
    first = subprocess.Popen(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_lock(tmp_path / "spool", first)
        second = qkdtel("run", "-c", str(cfg), "--duration", "20")
        assert second.returncode == 2, second.stderr
        assert "cannot start:" in second.stderr
        assert str(tmp_path / "spool") in second.stderr
        assert f"PID {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        # Looking into the spool beside the daemon stays allowed.
        check = qkdtel("spool", "check", "-c", str(cfg))
        assert check.returncode == 0, check.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=30)
    assert first.returncode == 0, err

    # The lock died with its daemon: the next one starts (and stops) normally, even after a
    # daemon killed outright (the kernel drops a flock with its process: no stale lock).
    killed = subprocess.Popen([sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg)])
    wait_for_lock(tmp_path / "spool", killed)
    killed.kill()
    killed.wait(timeout=30)
    again = qkdtel("run", "-c", str(cfg), "--duration", "0.5")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "spool").iterdir() if "lock" in p.name) == []

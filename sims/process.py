"""`sims up` in a child process, for code that wants the simulators out of its own process.

    with SimsProcess(tmp_path / "sims.yaml", ["--speed", "60"]) as sims:
        sims.devices["idq-quevedo-l4"]["address"]   # "127.0.0.1:40123"

The child writes the collector configuration once every agent listens; that file is both the
readiness signal and the map of ports. Leaving the block sends SIGTERM and waits.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class SimsProcess:
    """A `python -m qkdtel.sims up --config-out CONFIG ...` child process."""

    def __init__(self, config_out: Path, args: Sequence[str] = (), start_timeout: float = 60.0):
        self.config_path = Path(config_out)
        self.args = list(args)
        self.start_timeout = start_timeout
        self.log_path = self.config_path.with_suffix(".log")
        self.config: dict[str, Any] = {}
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def devices(self) -> dict[str, dict[str, Any]]:
        """The generated `devices:` entries by name."""
        return {d["name"]: d for d in self.config.get("devices", [])}

    def start(self) -> SimsProcess:
        self.config_path.unlink(missing_ok=True)
        command = [sys.executable, "-m", "qkdtel.sims", "up", "--config-out", str(self.config_path)]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*command, *self.args], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout
        while not self.config_path.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"sims up did not start:\n{log_text}")
            time.sleep(0.05)
        self.config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; return the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> SimsProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

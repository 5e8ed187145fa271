"""SIGHUP reloads the configuration of a running daemon (a real `qkdtel run` process): a device
added starts, one removed stops, the others poll on untouched, the spool stays; a broken file
keeps the running configuration and logs every error with its path and line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from tests.collector_run import collector_document, written


class Daemon:
    """`qkdtel run` in a subprocess, its log collected line by line as it comes."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if text in line:
                    return line
            assert self.proc.poll() is None, "".join(self.log)
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in the log:\n{''.join(self.log)}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return code


def probes(tmp_path: Path) -> dict[str, int]:
    """Points written per device so far (its qkdtel_device_status points)."""
    counts: dict[str, int] = {}
    for line in written(tmp_path).splitlines():
        if line.startswith("qkdtel_device_status,"):
            device = line.split("device=", 1)[1].split(",", 1)[0].split(" ", 1)[0]
            counts[device] = counts.get(device, 0) + 1
    return counts


def wait_for_points(tmp_path: Path, device: str, more_than: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while probes(tmp_path).get(device, 0) <= more_than:
        assert time.monotonic() < deadline, f"{device}: no new points ({probes(tmp_path)})"
        time.sleep(0.2)


def test_sighup_adds_removes_and_keeps_a_bad_file_out(tmp_path, tcp_probe_driver, tcp_servers):
    addresses = {name: tcp_servers.banner() for name in ("alpha", "beta", "gamma")}

    def device(name: str) -> dict:
        return {"name": name, "driver": "tcp_probe", "interval": 0.3, "address": addresses[name]}

    cfg = tmp_path / "qkdtel.yaml"

    def write(devices: list[dict]) -> None:
        cfg.write_text(yaml.safe_dump(collector_document(tmp_path, devices)))

    write([device("alpha"), device("beta")])
    daemon = Daemon(cfg)
    try:
        daemon.wait_for("collecting from 2 device(s)")
        wait_for_points(tmp_path, "beta", 0)
        spool = tmp_path / "spool" / "spool.sqlite3"
        inode = spool.stat().st_ino

        write([device("alpha"), device("gamma")])
        daemon.proc.send_signal(signal.SIGHUP)
        line = daemon.wait_for("reload: ")
        assert "added gamma; removed beta; 1 unchanged" in line, line
        wait_for_points(tmp_path, "gamma", 0)
        beta_after = probes(tmp_path).get("beta", 0)
        alpha_after = probes(tmp_path)["alpha"]
        time.sleep(1.5)
        assert probes(tmp_path).get("beta", 0) <= beta_after + 1  # at most a poll in flight
        assert probes(tmp_path)["alpha"] > alpha_after  # polled on throughout

        cfg.write_text(
            cfg.read_text().replace("interval: 0.3", "interval: 2 weeks", 1) + "devices_typo: []\n"
        )
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("keeping the running configuration")
        errors = [ln for ln in daemon.log if "reload: " in ln and "ERROR" in ln]
        assert any(f"{cfg}: devices[0].interval (line" in ln for ln in errors), errors
        assert any(f"{cfg}: devices_typo (line" in ln for ln in errors), errors
        gamma = probes(tmp_path)["gamma"]
        wait_for_points(tmp_path, "gamma", gamma)  # still running as before

        write([{**device("alpha"), "interval": 0.4}, device("gamma")])
        daemon.log.clear()
        daemon.proc.send_signal(signal.SIGHUP)
        assert "changed alpha; 1 unchanged" in daemon.wait_for("reload: ")
        wait_for_points(tmp_path, "alpha", probes(tmp_path)["alpha"])
        assert spool.stat().st_ino == inode  # the same spool throughout
    finally:
        code = daemon.stop()
    assert code == 0, "".join(daemon.log)
    assert "Traceback" not in "".join(daemon.log)

"""SIGHUP reloads the configuration of a running daemon (a real `qkdtel run` process): a device
added starts, one removed stops, the others poll on untouched, the spool stays; a broken file
keeps the running configuration and logs every error with its path and line."""

from __future__ import annotations

import asyncio
import logging
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


def test_reload_tells_the_trap_listener_of_new_devices(tmp_path):
    """A device added by a reload is known to the trap listener at once: its notifications
    carry its name, where before the reload they came from `unknown`."""
    from qkdtel.config import load_config
    from qkdtel.daemon import Collector
    from tests.collector_run import Recorder
    from tests.test_operate_logging import free_udp_port
    from tests.test_traps import oid

    port = free_udp_port()
    cfg = tmp_path / "qkdtel.yaml"
    norte = {"name": "norte", "driver": "qkd_snmp", "address": "127.0.0.1:9", "interval": "1h"}
    sur = {"name": "sur", "driver": "qkd_snmp", "address": "127.0.0.2:9", "interval": "1h"}

    def write(devices: list[dict]) -> None:
        document = collector_document(tmp_path, [{**d, "profile": "cerberis3"} for d in devices])
        document["traps"] = {"listen": f"127.0.0.1:{port}", "communities": ["c0mm"]}
        cfg.write_text(yaml.safe_dump(document))

    async def trap_from_sur() -> None:
        proc = await asyncio.create_subprocess_exec(
            "snmptrap", "-M", "/dev/null", "-v2c", "-c", "c0mm", "--clientaddr=127.0.0.2",
            f"127.0.0.1:{port}", "", oid("cerberis3", "cerbLinkDown"),
            oid("cerberis3", "cerbLinkState", 1), "i", "5",
        )  # fmt: skip
        assert await proc.wait() == 0
        await asyncio.sleep(1.0)

    write([norte])
    recorder = Recorder()

    async def scenario() -> None:
        collector = Collector(load_config(cfg), observers=[recorder])
        run = asyncio.create_task(collector.run(duration=30))
        while not collector._listeners:  # started
            await asyncio.sleep(0.1)
        await trap_from_sur()
        write([norte, sur])
        assert await collector.reload()
        await trap_from_sur()
        collector.stop()
        await run

    asyncio.run(scenario())
    events = [s.tags["device"] for s in recorder.samples if s.measurement == "qkd_event"]
    assert events == ["unknown", "sur"]


def test_a_sharded_daemon_reloads_only_its_share(tmp_path, caplog):
    """A daemon running as shard 0 of 2 takes, on reload, only the new devices of its shard;
    its spool and shard are no "change needing a restart"."""
    from qkdtel.config import load_config
    from qkdtel.daemon import Collector
    from qkdtel.shard import owned
    from qkdtel.shard import select as select_shard

    caplog.set_level(logging.INFO, logger="qkdtel.daemon")
    cfg = tmp_path / "qkdtel.yaml"

    def write(names: list[str]) -> None:
        devices = [
            {"name": n, "driver": "qkd_snmp", "address": "127.0.0.1:9", "profile": "toshiba",
             "interval": "1h"}
            for n in names
        ]  # fmt: skip
        cfg.write_text(yaml.safe_dump(collector_document(tmp_path, devices)))

    before = [f"site-{i}" for i in range(6)]
    after = [*before[1:], *(f"new-{i}" for i in range(6))]
    write(before)

    async def scenario() -> set[str]:
        collector = Collector(select_shard(load_config(cfg), 0, 2))
        run = asyncio.create_task(collector.run(duration=30))
        await asyncio.sleep(0.5)
        write(after)
        assert await collector.reload()
        names = {p.name for p in collector.pollers}
        collector.stop()
        await run
        return names

    assert asyncio.run(scenario()) == set(owned(after, 0, 2))
    assert set(owned(after, 0, 2)) != set(after)  # the test means something: a real share
    assert "reload: " in caplog.text and "next restart" not in caplog.text

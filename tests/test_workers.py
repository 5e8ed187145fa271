"""`qkdtel run --workers N`: worker processes on one host under a supervisor, each a shard.

The real daemon with two workers polls the simulated MadQCI twin into a real InfluxDB: each
device polled by exactly one worker, a worker killed with SIGKILL during an InfluxDB outage is
restarted and delivers what its spool held, SIGTERM stops everything. Then how the workers'
shards, ports and listeners are derived, and the refusals (exit 2, one line)."""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from qkdtel import cli_workers, shard
from qkdtel.config import load_config
from qkdtel.sims.influxd import InfluxServer, free_port
from qkdtel.spool_lock import SpoolLock, holder_pid

from .collector_run import poll_times, polled_by_one_scheduler
from .fixtures_snmp import SnmpSims

INTERVAL = 2.0


def _two_free_ports() -> int:
    """A loopback TCP port P such that P and P + 1 are both free now."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _config(
    snmp_sims: SnmpSims, influxdb: InfluxServer, db: str, tmp_path: Path, health_port: int
) -> Path:
    """The twin's config (every device every 2 s, its trap listener kept) writing to the real
    InfluxDB, /healthz on `health_port` (worker 1: the port + 1)."""
    return snmp_sims.daemon_config(
        tmp_path / "workers.yaml",
        influxdb.url,
        db,
        INTERVAL,
        retry_max_delay=1.0,
        health={"listen": f"127.0.0.1:{health_port}"},
    )


def _wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> None:
    """Until `ready()`; the supervisor exiting meanwhile fails the test at once."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"qkdtel run exited ({proc.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.3)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _polled_devices(port: int) -> set[str]:
    """The devices a worker's /metrics counts polls of."""
    _, text = _get(port, "/metrics")
    return set(re.findall(r'^qkdtel_polls_total\{device="([^"]+)"', text, re.MULTILINE))


def _worker_restarts(port: int) -> float:
    """`qkdtel_worker_restarts` on a worker's /metrics."""
    _, text = _get(port, "/metrics")
    found = re.search(r"^qkdtel_worker_restarts (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


def _restarts_stored(influxdb: InfluxServer, db: str) -> dict[str, int]:
    """shard -> the last `worker_restarts` each worker wrote to `qkdtel_collector`."""
    rows = influxdb.query(
        'SELECT last("worker_restarts") FROM "qkdtel_collector" GROUP BY "shard"', db
    )
    return {row["shard"]: row["last"] for row in rows}


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_split_the_twin_restart_a_killed_one_and_stop(
    snmp_sims: SnmpSims, influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    port = _two_free_ports()
    cfg = _config(snmp_sims, influxdb, influx_db, tmp_path, port)
    names = set(snmp_sims.agents)
    shares = {w: set(shard.owned(sorted(names), w, 2)) for w in range(2)}
    spools = [tmp_path / f"spool.shard-{w}" for w in range(2)]
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--workers", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(
            "every device polled",
            lambda: set(poll_times(influxdb, influx_db)) == names,
            proc,
            90,
        )
        workers = [holder_pid(spool) for spool in spools]
        assert set(workers) == _children(proc.pid)  # one worker per spool, both the parent's
        for w in range(2):  # worker w serves /metrics and /healthz on the port + w
            assert _polled_devices(port + w) == shares[w]
            assert _get(port + w, "/healthz")[0] == 200
            assert _worker_restarts(port + w) == 0
        influxdb.stop()  # an outage: what the workers poll from now on waits in their spools
        outage_at = time.time()
        time.sleep(3 * INTERVAL)
        killed_at = time.time()
        os.kill(workers[1], signal.SIGKILL)
        _wait_for(
            "worker 1 restarted",
            lambda: holder_pid(spools[1]) not in (None, workers[1]),
            proc,
            30,
        )
        influxdb.start()
        _wait_for(
            "worker 1's devices polled again and the outage delivered",
            lambda: all(
                polls[-1] > killed_at + INTERVAL
                for device, polls in poll_times(influxdb, influx_db).items()
                if device in shares[1]
            ),
            proc,
            90,
        )
        # The restart is counted where a NOC sees it: /metrics and the self-telemetry.
        assert (_worker_restarts(port), _worker_restarts(port + 1)) == (0, 1)
        _wait_for(
            "worker 1's restart in InfluxDB",
            lambda: _restarts_stored(influxdb, influx_db) == {"0": 0, "1": 1},
            proc,
            30,
        )
        running = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert not any(_alive(pid) for pid in running)  # SIGTERM stopped every worker
    text = log.read_text()
    assert re.search(r"worker 1 \(shard 1/2\) \(PID \d+\) died: killed by SIGKILL", text), text
    assert "restart 1 in 1 s" in text and "all workers stopped (1 restart(s))" in text
    times = poll_times(influxdb, influx_db)
    assert set(times) == names  # the union of the workers is the whole network
    for device, polls in times.items():
        # Exactly one worker polls each device: two would poll it twice as often. Until the
        # kill for worker 1's devices (the restarted worker starts a schedule of its own).
        steady = [t for t in polls if device in shares[0] or t < killed_at]
        assert len(steady) >= 3 and polled_by_one_scheduler(steady, INTERVAL), (device, steady)
        # Nothing lost: the polls of the outage, spooled before the kill, all reached InfluxDB.
        during = [t for t in polls if outage_at <= t < killed_at - 0.5]
        assert len(during) >= 2, (device, polls, outage_at, killed_at)
        before_kill = [t for t in polls if t < killed_at - 0.5]
        assert max(b - a for a, b in itertools.pairwise(before_kill)) < INTERVAL + 1.5, device


def test_sighup_reaches_every_worker_and_the_parent(snmp_sims: SnmpSims, tmp_path: Path) -> None:
    """Two devices added to the file: after SIGHUP each is polled by the worker that owns it;
    a worker restarted after that starts from the reloaded file (the parent re-read it)."""
    port = _two_free_ports()
    document = yaml.safe_load(snmp_sims.config_path.read_text())
    document.pop("traps", None)
    document["collector"] = {
        "spool_dir": str(tmp_path / "spool"),
        "health": {"listen": f"127.0.0.1:{port}"},
    }
    document["sinks"] = [{"type": "file", "path": str(tmp_path / "lp")}]
    for device in document["devices"]:
        device["interval"] = INTERVAL
    cfg = tmp_path / "workers.yaml"
    cfg.write_text(yaml.safe_dump(document))
    template = document["devices"][0]
    added = {}  # worker -> the name of a device added for it
    for i in itertools.count():
        name = f"added-{i}"
        added.setdefault(shard.owner(name, 2), name)
        if len(added) == 2:
            break
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for("both workers serving", lambda: all(_polled(port + w) for w in (0, 1)), proc, 90)
        document["devices"] += [dict(template, name=name) for name in added.values()]
        cfg.write_text(yaml.safe_dump(document))
        proc.send_signal(signal.SIGHUP)
        for w, name in added.items():
            _wait_for(
                f"{name} polled by worker {w}",
                lambda w=w, name=name: name in _polled(port + w),
                proc,
                30,
            )
            assert name not in _polled(port + 1 - w)
        victim = holder_pid(tmp_path / "spool.shard-1")
        os.kill(victim, signal.SIGKILL)
        _wait_for(
            "worker 1 restarted",
            lambda: holder_pid(tmp_path / "spool.shard-1") not in (None, victim),
            proc,
            30,
        )
        _wait_for(
            "worker 1 restarted with the reloaded file",
            lambda: added[1] in _polled(port + 1),
            proc,
            60,
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _polled(port: int) -> set[str]:
    """`_polled_devices`, or nothing while the worker is not (yet, or again) serving."""
    try:
        return _polled_devices(port)
    except OSError:
        return set()


def test_a_worker_that_cannot_start_stops_the_others_exit_2(
    snmp_sims: SnmpSims, influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    cfg = _config(snmp_sims, influxdb, influx_db, tmp_path, _two_free_ports())
    with SpoolLock(tmp_path / "spool.shard-1"):  # another daemon on worker 1's spool
        result = subprocess.run(
            [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2, result.stderr
    assert f"spool {tmp_path / 'spool.shard-1'} is in use by another qkdtel daemon" in (
        result.stderr
    )
    assert "worker 1 (shard 1/2) cannot start" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_shards_nest_in_the_host_shard(snmp_sims: SnmpSims, tmp_path: Path) -> None:
    """Host shard 1 of 2 with 3 workers: global shards 3, 4, 5 of 6, their spools and ports;
    listeners in worker 0 only, which still knows every other device."""
    document = yaml.safe_load(snmp_sims.config_path.read_text())
    document["collector"] = {
        "spool_dir": str(tmp_path / "spool"),
        "health": {"listen": "127.0.0.1:9300"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    loaded = load_config(path)
    configs = cli_workers.worker_configs(loaded, (1, 2), 3)
    all_names = {d.config.name for d in loaded.devices}
    for w, config in enumerate(configs):
        collector = config.config.collector
        assert (collector.shard.index, collector.shard.count) == (3 + w, 6)
        assert collector.spool_dir == tmp_path / f"spool.shard-{3 + w}"
        assert collector.health.listen == f"127.0.0.1:{9300 + w}"
        assert {d.config.name for d in config.devices} == set(shard.owned(all_names, 3 + w, 6))
        assert {d.config.name for d in config.devices + config.unpolled} == all_names
        assert bool(config.listeners) == (w == 0)
    assert loaded.listeners  # the twin's trap listener, which worker 0 took


def test_auto_is_one_worker_per_cpu_and_the_command_line_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"collector": {"spool_dir": str(tmp_path), "workers": "auto"}}))
    loaded = load_config(path)
    assert cli_workers.requested(argparse.Namespace(workers=None), loaded) == len(
        os.sched_getaffinity(0)
    )
    assert cli_workers.requested(argparse.Namespace(workers="3"), loaded) == 3


def _qkdtel_run(tmp_path: Path, collector: dict, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"collector": {"spool_dir": str(tmp_path / "s"), **collector}}))
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_workers_exit_2_with_one_line(tmp_path: Path) -> None:
    for collector, args, words in (
        ({}, ("--workers", "0"), "--workers '0': expected 1 to 256 or auto"),
        ({}, ("--workers", "many"), "--workers 'many': expected 1 to 256 or auto"),
        ({}, ("--workers", "2", "--live"), "--live shows one collector: not with --workers"),
        ({}, ("--workers", "2", "--shard", "5/600"), "shard count 1200: must be 1 to 1024"),
        ({"health": {"listen": "127.0.0.1:65535"}}, ("--workers", "2"), "would need port 65536"),
    ):
        result = _qkdtel_run(tmp_path, collector, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_workers_in_the_file_is_checked_with_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"collector:\n  spool_dir: {tmp_path / 's'}\n  workers: 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "collector.workers (line 3): expected 1 to 256 or auto, not 0" in (result.stderr), (
        result.stderr
    )

"""`qkdtel run` with its spool on a full disk and InfluxDB down: it starts, polls, counts every
point it cannot keep as dropped (logged once per episode), stops on SIGTERM and starts again on
the still-full disk; once space is back and InfluxDB is up, delivery resumes by itself and every
point not counted as dropped arrives: collected = arrived + dropped, over the three runs.

Real peers throughout: the daemon as a process, a real influxd stopped and started, a real
tmpfs filled by a filler file (`tests/fixtures_disk.py`; without root the full disk is injected
in-process, which a daemon process cannot see, so this test then asks for root).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from qkdtel.sims.influxd import InfluxServer
from qkdtel.spool_space import RESERVE_FILE
from tests.collector_run import collector_document
from tests.fixtures_disk import SmallDisk, small_disk

SUMMARY = re.compile(
    r"sink influxdb since start: (\d+) points collected, (\d+) written, (\d+) rejected,"
    r" (\d+) dropped, (\d+) pending"
)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    with small_disk(tmp_path, "32m", monkeypatch) as d:
        if not d.real:
            pytest.fail("needs root for a tmpfs: the daemon process cannot see an injected fault")
        yield d


def run_daemon(config: Path, seconds: float, during=None) -> tuple[list[int], str]:
    """Run `qkdtel run` for `seconds` (calling `during()` half-way), stop it with SIGTERM;
    its summary numbers (collected, written, rejected, dropped, pending) and its log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(seconds / 2)
    if during is not None:
        during()
    time.sleep(seconds / 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "never retrieved" not in err, err
    match = SUMMARY.search(err)
    assert match, err
    return [int(n) for n in match.groups()], err


def test_run_on_a_full_disk_counts_every_loss_and_delivers_the_rest(
    disk: SmallDisk,
    influxdb: InfluxServer,
    influx_db: str,
    tcp_probe_driver: str,
    tcp_servers,
    tmp_path: Path,
) -> None:
    devices = [
        {"name": f"d{i}", "driver": "tcp_probe", "interval": 0.1, "address": tcp_servers.banner()}
        for i in range(5)
    ]
    document = collector_document(
        tmp_path, devices, shutdown_grace=3, retry_max_delay=0.5, flush_interval=0.1
    )
    document["collector"]["spool_dir"] = str(disk.path / "spool")
    document["sinks"] = [{"type": "influxdb_v1", "url": influxdb.url, "database": influx_db}]
    config = tmp_path / "qkdtel.yaml"
    config.write_text(yaml.safe_dump(document))
    influxdb.stop()
    try:
        first, log1 = run_daemon(config, 8.0, during=disk.fill)
        second, log2 = run_daemon(config, 3.0)  # started on the still-full disk
        disk.free()
        influxdb.start()
        third, log3 = run_daemon(config, 5.0)
    finally:
        influxdb.start()

    # Points were lost on the full disk, counted, and the loss logged once per run, with the
    # spool's path and the free space.
    assert first[3] > 0 and second[0] > 0, (first, second)
    losses = [line for line in log1.splitlines() if "spool full (disk full" in line]
    assert len(losses) == 1, log1
    assert str(disk.path / "spool") in losses[0] and "bytes free" in losses[0]
    # The second run started on the full disk: in the disk-full state from the start, keeping
    # to the file's pages (whether it had to drop more depends on the slack they had).
    assert "disk full" in log2
    assert len([line for line in log2.splitlines() if "spool full (" in line]) <= 1, log2
    assert "disk full" not in log3 and (disk.path / "spool" / RESERVE_FILE).exists()
    assert third[3] == 0 and third[4] == 0, third  # nothing lost after, nothing left

    arrived = sum(
        influxdb.count(influx_db, measurement, field)
        for measurement, field in [
            ("tcp_probe", "connect_time_s"),
            ("qkdtel_device_status", "up"),
            ("qkdtel_collector", "points_collected"),
        ]
    )
    collected = sum(run[0] for run in (first, second, third))
    dropped = sum(run[3] for run in (first, second, third))
    assert first[0] > 50 and arrived > 0
    assert collected == arrived + dropped, (first, second, third, arrived)

"""Sharded collectors: rendezvous hashing (properties), the command line, and four real
`qkdtel run` shards polling the simulated MadQCI twin into a real InfluxDB."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdtel import shard
from qkdtel.sims.influxd import InfluxServer

from .collector_run import poll_times, polled_by_one_scheduler
from .fixtures_snmp import SnmpSims

names = st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=300, unique=True)


@given(names, st.integers(1, 64))
def test_every_device_has_exactly_one_shard(devices: list[str], count: int) -> None:
    shares = [shard.owned(devices, index, count) for index in range(count)]
    flat = [name for share in shares for name in share]
    assert sorted(flat) == sorted(devices)  # each name once: no gap, no overlap


@given(names, st.integers(1, 32))
def test_a_new_shard_takes_devices_only_for_itself(devices: list[str], count: int) -> None:
    for name in devices:
        before, after = shard.owner(name, count), shard.owner(name, count + 1)
        assert after in (before, count)  # stays, or moves to the new shard, never elsewhere


@settings(max_examples=20, deadline=None)  # 4,000 names x N+1 shards: slow on a busy machine
@given(st.integers(1, 15), st.integers(0, 10**6))
def test_a_new_shard_takes_about_its_share(count: int, salt: int) -> None:
    devices = [f"dev-{salt}-{i}" for i in range(4000)]
    moved = sum(shard.owner(n, count) != shard.owner(n, count + 1) for n in devices)
    expected = len(devices) / (count + 1)
    # Binomial(4000, 1/(N+1)): 5 standard deviations either side.
    sigma = (len(devices) * (1 / (count + 1)) * (1 - 1 / (count + 1))) ** 0.5
    assert abs(moved - expected) <= 5 * sigma


def test_the_hash_is_stable_across_processes() -> None:
    """BLAKE2b, not the per-process salted hash(): another interpreter agrees."""
    code = "from qkdtel import shard; print([shard.owner(f'd{i}', 7) for i in range(50)])"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "random"},
    )
    assert other.stdout.strip() == str([shard.owner(f"d{i}", 7) for i in range(50)])


def _qkdtel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_bad_shard_arguments_exit_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"collector": {"spool_dir": str(tmp_path / "spool")}}))
    for args, words in (
        (["--shard", "4/4"], "shard index 4: must be 0 to 3 (of 4 shards)"),
        (["--shard", "one/4"], "--shard 'one/4': expected INDEX/COUNT"),
        (["--shard-from-hostname", "3"], "does not end in -<ordinal>"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOSTNAME": "collector"},
        )
        assert result.returncode == 2, result.stderr
        assert words in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_shard_in_the_file_is_checked_with_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"collector:\n  spool_dir: {tmp_path / 'spool'}\n  shard: {{index: 4, count: 4}}\n"
    )
    result = _qkdtel("check", "-c", str(cfg))
    assert result.returncode == 2
    assert "collector.shard" in result.stderr and "index 4 must be below count 4" in result.stderr


def test_poll_with_shard_from_hostname_polls_that_pods_share(snmp_sims: SnmpSims) -> None:
    names = list(snmp_sims.agents)
    mine = shard.owned(names, 2, 4)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "qkdtel.cli", "poll", "-c", str(snmp_sims.config_path)),
            *("--shard-from-hostname", "4", "--status", "-f", "line"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOSTNAME": "qkdtel-2"},
    )
    assert result.returncode == 0, result.stderr
    polled = {
        part.split("=", 1)[1]
        for line in result.stdout.splitlines()
        if line.startswith("qkdtel_device_status,")
        for part in line.split(" ", 1)[0].split(",")
        if part.startswith("device=")
    }
    assert polled == set(mine) and 0 < len(mine) < len(names)


INTERVAL = 2.0


def _shard_config(snmp_sims: SnmpSims, influxdb: InfluxServer, db: str, tmp_path: Path) -> Path:
    """The twin's config (every device every 2 s) writing to the real InfluxDB; no trap
    listener: four processes cannot all listen on one port."""
    path = tmp_path / "sharded.yaml"
    return snmp_sims.daemon_config(path, influxdb.url, db, INTERVAL, traps=False)


def _wait_for_every_device(
    influxdb: InfluxServer, db: str, names: set[str], procs: list[subprocess.Popen[bytes]]
) -> None:
    """Until every device has a poll in InfluxDB (starting four daemons on a loaded 2-core
    machine takes seconds); a shard that exits meanwhile fails the test at once."""
    deadline = time.monotonic() + 90
    while set(poll_times(influxdb, db)) != names:
        assert all(p.poll() is None for p in procs), "a shard exited"
        assert time.monotonic() < deadline, "not every device was polled in 90 s"
        time.sleep(0.5)


def _gaps(times: list[float], start: float, end: float) -> list[float]:
    """Intervals between consecutive polls that both fall in [start, end)."""
    inside = [t for t in times if start <= t < end]
    return [b - a for a, b in itertools.pairwise(inside)]


def test_four_shards_split_the_twin_and_survive_one_killed(
    snmp_sims: SnmpSims, influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    cfg = _shard_config(snmp_sims, influxdb, influx_db, tmp_path)
    names = list(snmp_sims.agents)
    shares = {index: set(shard.owned(names, index, 4)) for index in range(4)}
    victim = max(shares, key=lambda index: len(shares[index]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--shard", f"{i}/4"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    try:
        _wait_for_every_device(influxdb, influx_db, set(names), procs)
        time.sleep(10)
        killed_at = time.time()
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        time.sleep(10)
        end = time.time()
        for i, proc in enumerate(procs):
            if i != victim:
                proc.send_signal(signal.SIGTERM)
        for i, proc in enumerate(procs):
            if i != victim:
                _, err = proc.communicate(timeout=30)
                assert proc.returncode == 0, err.decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    times = poll_times(influxdb, influx_db)
    assert set(times) == set(names)  # the union of the shards is the whole network
    for index in range(4):  # each shard spooled on its own and tagged its self-telemetry
        assert (tmp_path / f"spool.shard-{index}").is_dir()
    tagged = influxdb.query(
        'SELECT count("points_collected") FROM "qkdtel_collector" GROUP BY "shard"', influx_db
    )
    assert {row["shard"] for row in tagged} == {"0", "1", "2", "3"}

    after = (killed_at + 1, end - 1)
    for device, polls in times.items():
        gaps_before = _gaps(polls, polls[0] + INTERVAL, killed_at)
        # Exactly one shard polls each device: two would poll it twice as often.
        before = [t for t in polls if t < killed_at]
        assert len(before) >= 4 and polled_by_one_scheduler(before, INTERVAL), (device, before)
        if device in shares[victim]:
            assert not [t for t in polls if t > killed_at + INTERVAL], device  # nobody took over
            continue
        gaps_after = _gaps(polls, *after)
        # The others' lateness is unchanged: no gap in the survivors' polls grows past 1 s late,
        # and they poll as often after the kill as
        # before (the mean interval between polls).
        late_before = max(g - INTERVAL for g in gaps_before)
        late_after = max(g - INTERVAL for g in gaps_after)
        assert late_after <= max(1.0, late_before + 0.5), (device, gaps_before, gaps_after)
        mean_before = sum(gaps_before) / len(gaps_before)
        mean_after = sum(gaps_after) / len(gaps_after)
        assert abs(mean_after - mean_before) <= 0.25, (device, gaps_before, gaps_after)

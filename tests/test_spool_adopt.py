"""Orphaned spools (`qkdtel.spool_adopt`): after the layout on a host changes (`--workers 2` ->
unsharded here), the spools no collector of the new layout owns are delivered by the one that
starts, and removed; one held by a live process is left alone; a damaged one is salvaged first.

End to end through the real CLI: simulated SNMP agents, a real influxd stopped while two workers
spool, then an unsharded `qkdtel run` that adopts both worker spools. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from qkdtel import shard
from qkdtel.config import CollectorSettings, ShardSettings, load_config_text
from qkdtel.daemon import Collector
from qkdtel.sims.influxd import InfluxServer, free_port
from qkdtel.spool import SPOOL_FILE, _split, _unpack_ends, list_rejected, spool_status
from qkdtel.spool_adopt import base_spool_dir, is_orphan, orphan_pending, orphans
from qkdtel.spool_lock import SpoolLock
from tests.collector_run import Recorder, collector_document
from tests.fixtures_snmp import SnmpSims
from tests.test_spool_damaged import TOTAL, delivered_seqs, fill, last_telemetry

INTERVAL = 2.0
STATUS_LINE = re.compile(r"^qkdtel_device_status,(?:\S*?,)?device=([^, ]+)\S* .* (\d+)$")


# -- the rule ------------------------------------------------------------------------------------


def _make_spools(base: Path, indexes: list[int | None]) -> None:
    """A spool database (the file is what counts) for each shard index, None: B itself."""
    for index in indexes:
        directory = base if index is None else shard.spool_dir(base, index)
        directory.mkdir(parents=True)
        (directory / SPOOL_FILE).write_bytes(b"")


def test_which_sibling_spools_are_orphans(tmp_path: Path) -> None:
    base = tmp_path / "spool"
    _make_spools(base, [None, 0, 1, 2, 3, 5, 12])
    (tmp_path / "spool.shard-7").mkdir()  # no database: not a spool
    (tmp_path / "spool.shard-03").mkdir()  # no shard's name (shard 3's is spool.shard-3)
    (tmp_path / "spool.shard-03" / SPOOL_FILE).write_bytes(b"")
    (tmp_path / "spoolx.shard-4").mkdir()  # another spool_dir's shard
    (tmp_path / "spoolx.shard-4" / SPOOL_FILE).write_bytes(b"")

    def names(running: ShardSettings | None) -> list[str]:
        return [p.name for p in orphans(base, running)]

    # Unsharded: every shard's spool, in shard order; never B, its own.
    assert names(None) == [f"spool.shard-{k}" for k in (0, 1, 2, 3, 5, 12)]
    # Shard i of N: B, and the shards of N and above; never one below N, mine or not.
    assert names(ShardSettings(index=1, count=4)) == ["spool", "spool.shard-5", "spool.shard-12"]
    assert names(ShardSettings(index=0, count=2)) == [
        "spool",
        "spool.shard-2",
        "spool.shard-3",
        "spool.shard-5",
        "spool.shard-12",
    ]
    assert names(ShardSettings(index=5, count=16)) == ["spool"]
    for count in range(1, 20):
        for index in range(count):
            assert not is_orphan(index, ShardSettings(index=0, count=count))
        assert is_orphan(count, ShardSettings(index=0, count=count))
        assert is_orphan(None, ShardSettings(index=count - 1, count=count))
    assert not is_orphan(None, None) and is_orphan(0, None)
    # A sharded collector's B is its own spool_dir without the suffix.
    sharded = CollectorSettings.model_validate(
        {"spool_dir": shard.spool_dir(base, 3), "shard": {"index": 3, "count": 4}}
    )
    assert base_spool_dir(sharded) == base
    assert base_spool_dir(CollectorSettings.model_validate({"spool_dir": base})) == base


# -- in the daemon: locked, damaged --------------------------------------------------------------


def _run_collector(tmp_path: Path, devices: list[dict], seconds: float) -> Recorder:
    """The daemon, unsharded, on tmp_path/spool with the file sink tmp_path/lp."""
    text = yaml.safe_dump(collector_document(tmp_path, devices))
    recorder = Recorder()
    asyncio.run(Collector(load_config_text(text), observers=[recorder]).run(duration=seconds))
    return recorder


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def _status(tmp_path: Path, *extra: str) -> str:
    """`qkdtel spool status` on the configuration of `_run_collector` (exit 0)."""
    cfg = tmp_path / "status.yaml"
    cfg.write_text(yaml.safe_dump(collector_document(tmp_path, [])))
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "spool", "status", "-c", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_an_orphan_held_by_a_live_process_is_left_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    orphan = tmp_path / "spool.shard-1"
    fill(orphan / SPOOL_FILE)
    doc = json.loads(_status(tmp_path, "--json"))  # no spool of its own yet, one orphan
    assert doc["points"] == 0 and doc["sinks"] == []
    assert doc["orphans"] == [{"spool": str(orphan), "pending": TOTAL}]
    before = _digest(orphan)
    caplog.set_level(logging.INFO, logger="qkdtel")
    with SpoolLock(orphan):  # a live collector of another layout still runs on it
        _run_collector(tmp_path, [], 1.5)
    assert _digest(orphan) == before
    assert orphan_pending(orphan, ["file"]) == TOTAL
    assert delivered_seqs(tmp_path) == []
    left = [r for r in caplog.records if "left alone" in r.getMessage()]
    assert len(left) == 1 and left[0].levelno == logging.INFO
    assert str(orphan) in left[0].getMessage()
    assert f"PID {os.getpid()}" in left[0].getMessage()
    assert not any("adopted" in r.getMessage() for r in caplog.records)
    assert last_telemetry(tmp_path)["points_adopted"] == "0i"


def test_a_damaged_orphan_is_salvaged_and_adopted_while_polling_goes_on(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tcp_probe_driver: str,
    tcp_servers: object,
) -> None:
    orphan = tmp_path / "spool.shard-2"
    fill(orphan / SPOOL_FILE)
    with (orphan / SPOOL_FILE).open("r+b") as f:
        f.write(os.urandom(100))  # garbage over the header: "file is not a database"
    status = _status(tmp_path)
    assert f"{orphan}: spool file {orphan / SPOOL_FILE} is damaged" in status, status
    caplog.set_level(logging.INFO, logger="qkdtel")
    device = {
        "name": "probe",
        "driver": "tcp_probe",
        "interval": 0.2,
        "address": tcp_servers.banner(),  # type: ignore[attr-defined]
    }
    recorder = _run_collector(tmp_path, [device], 3.0)

    assert sorted(delivered_seqs(tmp_path)) == list(range(TOTAL))  # every point, once
    messages = [r.getMessage() for r in caplog.records]
    salvaged = [m for m in messages if m.startswith(f"spool file {orphan / SPOOL_FILE} was dam")]
    assert len(salvaged) == 1 and "0 points lost" in salvaged[0]
    adopted = [m for m in messages if m.startswith("adopted ")]
    assert len(adopted) == 1
    assert adopted[0].startswith(
        f"adopted {TOTAL:,} pending points from {orphan} (no collector of this layout owns it)"
        " and removed its spool (the directory keeps spool.sqlite3.damaged-"
    )
    assert not (orphan / SPOOL_FILE).exists()
    assert [p.name.split(".damaged-")[0] for p in orphan.iterdir()] == [SPOOL_FILE]
    assert len(recorder.statuses()["probe"]) >= 5  # polling went on all along
    telemetry = last_telemetry(tmp_path)
    assert telemetry["points_adopted"] == f"{TOTAL}i"
    assert telemetry["spool_damaged"] == "1i"


def test_an_orphan_that_cannot_be_adopted_is_named_and_the_next_one_still_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = tmp_path / "spool.shard-4"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / SPOOL_FILE)  # some other program's database
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    good = tmp_path / "spool.shard-5"
    fill(good / SPOOL_FILE)
    caplog.set_level(logging.INFO, logger="qkdtel")
    _run_collector(tmp_path, [], 2.0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert (
        errors[0]
        .getMessage()
        .startswith(
            f"cannot adopt the orphaned spool {foreign}: SpoolLayoutError: spool file"
            f" {foreign / SPOOL_FILE} is not a qkdtel spool"
        )
    )
    assert errors[0].getMessage().endswith("; it is left as it is")
    assert (foreign / SPOOL_FILE).exists() and not good.exists()
    assert sorted(delivered_seqs(tmp_path)) == list(range(TOTAL))


def test_adoption_waits_for_room_instead_of_dropping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """This collector's spool holds 1,000 points at most and its sink is down: adoption takes
    at most half of that and waits, the orphan keeps the rest, nothing is dropped; with a sink
    that writes (the next start), everything arrives once."""
    orphan = tmp_path / "spool.shard-1"
    fill(orphan / SPOOL_FILE)
    caplog.set_level(logging.INFO, logger="qkdtel")
    down = collector_document(tmp_path, [], spool_max_points=1000, retry_max_delay=0.5)
    down["sinks"] = [
        {"type": "influxdb_v1", "url": f"http://127.0.0.1:{free_port()}", "database": "x"}
    ]
    recorder = Recorder()
    asyncio.run(Collector(load_config_text(yaml.safe_dump(down)), [recorder]).run(duration=2.0))

    telemetry = [s.fields for s in recorder.samples if s.measurement == "qkdtel_collector"]
    assert telemetry and telemetry[-1]["points_dropped"] == 0
    assert 0 < telemetry[-1]["points_adopted"] <= 500
    assert orphan_pending(orphan, ["file"]) == TOTAL - telemetry[-1]["points_adopted"]
    waits = [r.getMessage() for r in caplog.records if "waits for room" in r.getMessage()]
    assert len(waits) == 1 and str(orphan) in waits[0], waits

    _run_collector(tmp_path, [], 3.0)  # the file sink: never knew the spool, gets all of it
    assert sorted(delivered_seqs(tmp_path)) == list(range(TOTAL))
    assert not orphan.exists()


def test_two_shards_starting_beside_an_unsharded_spool_adopt_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "spool"
    spool = fill(base / SPOOL_FILE, keep_open=True)
    first = spool.read("file", 2)
    assert first is not None
    spool.ack("file", first, [(line, "a refused line") for line in first.lines])
    spool.close()
    caplog.set_level(logging.INFO, logger="qkdtel")
    collectors = []
    for w in range(2):  # going from unsharded to two shards (two workers) on this host
        document = collector_document(tmp_path, [])
        document["sinks"][0]["path"] = str(tmp_path / "lp" / str(w))
        loaded = shard.select(load_config_text(yaml.safe_dump(document)), w, 2)
        collectors.append(Collector(loaded))

    async def both() -> None:
        await asyncio.gather(*(c.run(duration=2.0) for c in collectors))

    asyncio.run(both())
    adopted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("adopted ")]
    assert adopted == [
        f"adopted {TOTAL - 2:,} pending points from {base} (no collector of this layout owns it)"
        " and removed it"
    ]
    assert sorted(delivered_seqs(tmp_path)) == list(range(2, TOTAL))  # once, by one of them
    assert not base.exists()
    kept = [row for w in range(2) for row in list_rejected(shard.spool_dir(base, w) / SPOOL_FILE)]
    assert [(r.sink, r.reason) for r in kept] == [("file", "a refused line")] * 2
    assert [r.line for r in kept] == first.lines


# -- end to end: `--workers 2`, an outage, then unsharded ------------------------------------------


def _config(snmp_sims: SnmpSims, influxdb: InfluxServer, db: str, tmp_path: Path) -> Path:
    """The twin's config, every device every 2 s, into the real InfluxDB."""
    return snmp_sims.daemon_config(
        tmp_path / "adopt.yaml",
        influxdb.url,
        db,
        INTERVAL,
        traps=False,
        retry_max_delay=1.0,
        shutdown_grace="1s",
    )


def _spooled_polls(directory: Path) -> set[tuple[str, int]]:
    """(device, time in ns) of every qkdtel_device_status point the spool holds (read-only)."""
    path = directory / SPOOL_FILE
    if not path.exists():
        return set()
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body, ends FROM chunks").fetchall()
    finally:
        conn.close()
    found = set()
    for body, ends in rows:
        for line in _split(body, _unpack_ends(ends)):
            if match := STATUS_LINE.match(line.decode()):
                found.add((match[1], int(match[2])))
    return found


def _stored_polls(influxdb: InfluxServer, db: str) -> set[tuple[str, int]]:
    rows = influxdb.query('SELECT "up" FROM "qkdtel_device_status" GROUP BY "device"', db)
    return {(row["device"], row["time"]) for row in rows}


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"qkdtel run exited ({proc.returncode}) waiting for {what}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.3)


def _start(cfg: Path, log: Path, *extra: str) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()


def test_worker_spools_left_by_going_unsharded_are_delivered_and_removed(
    snmp_sims: SnmpSims, influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    cfg = _config(snmp_sims, influxdb, influx_db, tmp_path)
    names = set(snmp_sims.agents)
    shares = [set(shard.owned(sorted(names), w, 2)) for w in range(2)]
    spools = [tmp_path / f"spool.shard-{w}" for w in range(2)]
    influxdb.stop()  # the outage: everything the workers poll waits in their spools
    try:
        log = tmp_path / "workers.log"
        proc = _start(cfg, log, "--workers", "2")
        try:
            _wait(
                "two polls of every device spooled by its worker",
                lambda: all(
                    sum(d == device for d, _ in _spooled_polls(spools[w])) >= 2
                    for w in range(2)
                    for device in shares[w]
                ),
                proc,
                60,
            )
            _stop(proc, log)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        influxdb.start()
    spooled = _spooled_polls(spools[0]) | _spooled_polls(spools[1])
    pending = [spool_status(s / SPOOL_FILE).sinks[0].pending for s in spools]
    assert all(pending) and not _stored_polls(influxdb, influx_db) & spooled

    # The operator asks what is left before going unsharded: the orphans and their backlog.
    status = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "spool", "status", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    for spool, n in zip(spools, pending, strict=True):
        assert f"{spool}: {n:,} pending point(s)" in status.stdout, status.stdout
    assert "the next `qkdtel run` (unsharded) adopts" in status.stdout

    log = tmp_path / "unsharded.log"
    proc = _start(cfg, log)
    try:
        _wait(
            "every spooled poll in InfluxDB",
            lambda: spooled <= _stored_polls(influxdb, influx_db),
            proc,
            40,
        )
        _wait("both spools adopted", lambda: log.read_text().count("adopted ") == 2, proc, 20)
        _stop(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    for spool, n in zip(spools, pending, strict=True):
        line = (
            f"adopted {n:,} pending points from {spool} (no collector of this layout owns it)"
            " and removed it"
        )
        assert line in text, text
        assert not spool.exists()
    assert "Traceback" not in text

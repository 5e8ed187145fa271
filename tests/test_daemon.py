"""The daemon against real TCP peers (the external tcp_probe driver): isolation of a hung or
refusing device, back-off, device status, self-telemetry, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from tests.collector_run import Recorder, collector_document, written


def collector_config(tmp_path: Path, devices: list[dict], **collector) -> str:
    return yaml.safe_dump(collector_document(tmp_path, devices, **collector))


def test_hung_and_refusing_devices_do_not_delay_others(tmp_path, tcp_probe_driver, tcp_servers):
    devices = [
        {
            "name": "good",
            "driver": "tcp_probe",
            "interval": 0.2,
            "timeout": 1.0,
            "tags": {"node": "Norte"},
            "address": tcp_servers.banner(),
            "read_banner": True,
        },
        {
            "name": "hung",
            "driver": "tcp_probe",
            "interval": 0.2,
            "timeout": 0.3,
            "address": tcp_servers.silent(),
            "read_banner": True,
        },
        {
            "name": "refused",
            "driver": "tcp_probe",
            "interval": 0.2,
            "timeout": 1.0,
            "address": tcp_servers.closed(),
        },
    ]
    loaded = load_config_text(collector_config(tmp_path, devices, max_backoff=5))
    recorder = Recorder()
    started = time.monotonic()
    asyncio.run(Collector(loaded, observers=[recorder]).run(duration=3.0))
    elapsed = time.monotonic() - started
    assert elapsed < 3.0 + loaded.config.collector.shutdown_grace

    status = recorder.statuses()
    good = status["good"]
    # ~15 scheduled runs in 3 s: the hung device (0.3 s timeouts) must not slow these down.
    assert len(good) >= 8, len(good)  # of ~15: a loaded CI machine loses some
    assert all(s.fields["up"] for s in good)
    assert all(s.fields["error_class"] == "" for s in good)

    hung = status["hung"]
    assert hung and all(s.fields["error_class"] == "timeout" for s in hung)
    assert all(0.25 <= s.fields["poll_duration_s"] < 1.2 for s in hung)  # 0.3 s, not 5 s

    refused = status["refused"]
    assert refused and all(s.fields["error_class"] == "refused" for s in refused)
    failures = [s.fields["consecutive_failures"] for s in refused]
    assert failures == list(range(1, len(failures) + 1))
    assert [s.fields["backoff_s"] for s in refused[:4]] == [0.2, 0.4, 0.8, 1.6][: len(refused)]
    # Back-off: 0.2+0.2, 0.2+0.4, 0.2+0.8, 0.2+1.6 s between polls: at most 5 polls in 3 s.
    assert len(refused) <= 5, len(refused)

    points = [s for s in recorder.samples if s.measurement == "tcp_probe"]
    assert len(points) == len(good)
    assert all(p.tags["device"] == "good" and p.tags["node"] == "Norte" for p in points)
    assert all(p.fields["banner"] == "QKD-MGMT ready" for p in points)

    health = [s for s in recorder.samples if s.measurement == "qkdtel_collector"]
    assert health, "no self-telemetry"
    assert health[-1].fields["points_collected"] > 0
    assert {"points_pending", "points_written", "write_latency_s"} <= set(health[-1].fields)


def test_device_recovers_and_back_off_resets(tmp_path, tcp_probe_driver, tcp_servers):
    address = tcp_servers.closed()
    devices = [{"name": "flaky", "driver": "tcp_probe", "interval": 0.2, "address": address}]
    loaded = load_config_text(collector_config(tmp_path, devices))
    recorder = Recorder()

    async def scenario() -> None:
        collector = Collector(loaded, observers=[recorder])
        run = asyncio.create_task(collector.run(duration=4.0))
        await asyncio.sleep(1.2)
        host, port = address.rsplit(":", 1)
        server = await asyncio.start_server(lambda r, w: w.close(), host, int(port))
        async with server:
            await run

    asyncio.run(scenario())
    flaky = recorder.statuses()["flaky"]
    assert not flaky[0].fields["up"]
    assert flaky[-1].fields["up"], [s.fields for s in flaky]
    first_up = next(i for i, s in enumerate(flaky) if s.fields["up"])
    assert flaky[first_up].fields["consecutive_failures"] == 0
    assert flaky[first_up].fields["backoff_s"] == 0
    assert len(flaky) - first_up >= 3  # back to the normal interval after recovery


def test_sigterm_stops_within_grace_and_flushes(tmp_path, tcp_probe_driver, tcp_servers):
    devices = [
        {
            "name": "good",
            "driver": "tcp_probe",
            "interval": 0.2,
            "address": tcp_servers.banner(),
            "read_banner": True,
        },
        {
            "name": "hung",
            "driver": "tcp_probe",
            "interval": 0.2,
            "timeout": 30,
            "address": tcp_servers.silent(),
            "read_banner": True,
        },
    ]
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(collector_config(tmp_path, devices, shutdown_grace=2))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    took = time.monotonic() - sent
    assert proc.returncode == 0, err
    assert took < 2 + 4.0, took  # the 30 s poll of `hung` was abandoned within the grace
    assert "abandoned 1 poll" in err

    lines = written(tmp_path)
    good_points = [ln for ln in lines.splitlines() if ln.startswith("tcp_probe,")]
    assert len(good_points) >= 5
    assert 'error_class="timeout"' not in lines  # never timed out: abandoned, not failed


def test_traps_become_events_of_the_right_device(tmp_path, single_agent):
    """The daemon's trap listener names the sending device even when every simulated module
    sits on 127.0.0.1 (told apart by agent port), and the event is spooled like a poll."""
    from qkdtel.sims.influxd import free_port
    from qkdtel.sims.snmp.profiles import TrapCondition

    sims = [single_agent("cerberis3"), single_agent("hwdu_cv")]
    listen = ("127.0.0.1", free_port())
    document = collector_document(tmp_path, [s.device for s in sims])
    document["traps"] = {
        "listen": f"{listen[0]}:{listen[1]}",
        "communities": [sims[0].credentials.community],
    }
    loaded = load_config_text(yaml.safe_dump(document))
    recorder = Recorder()

    async def scenario() -> None:
        collector = Collector(loaded, observers=[recorder])
        run = asyncio.create_task(collector.run(duration=3.0))
        await asyncio.sleep(1.0)
        for sim in sims:
            row = sim.agent.rows[0]
            sim.background.call(
                lambda s=sim, r=row: asyncio.ensure_future(
                    s.agent.notify(TrapCondition.LINK_DOWN, r, listen)
                )
            )
        await run

    asyncio.run(scenario())
    events = [s for s in recorder.samples if s.measurement == "qkd_event"]
    assert {e.tags["device"] for e in events} == {s.agent.name for s in sims}
    assert {e.fields["notification"] for e in events} == {"cerbLinkDown", "hwcvChannelDown"}
    # The state-change notification carries the link's current state, which is still active.
    assert all(e.tags["event"] == "link_up" for e in events), [dict(e.tags) for e in events]
    assert {e.tags["node"] for e in events} == {s.agent.site for s in sims}
    lines = written(tmp_path)
    assert lines.count("qkd_event,") == 2


def test_invalid_trap_user_reported_at_load_with_its_path():
    from qkdtel.config import ConfigError

    text = "traps:\n  users:\n    - {user: noc, auth_protocol: sha256, auth_key: short}\n"
    try:
        load_config_text(text)
    except ConfigError as exc:
        assert any(p.startswith("traps.users[0]") and "line 3" in p for p in exc.problems), exc
        assert "short" not in str(exc.problems)
    else:
        raise AssertionError("an invalid trap user was accepted")


def test_run_refuses_a_spool_of_another_layout(tmp_path):
    """A spool written by an older qkdtel is never misread: `qkdtel run` names it and exits 2."""
    import sqlite3

    from qkdtel.spool import SPOOL_FILE

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    old = sqlite3.connect(spool_dir / SPOOL_FILE)
    old.execute("CREATE TABLE points (id INTEGER PRIMARY KEY, line TEXT NOT NULL)")
    old.close()
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(collector_config(tmp_path, []))
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot start:" in result.stderr and SPOOL_FILE in result.stderr
    assert "Traceback" not in result.stderr


def test_start_lag_shows_polls_queued_behind_the_concurrency_limit(
    tmp_path, tcp_probe_driver, tcp_servers
):
    """Four silent devices hold the one `concurrency` slot 0.4 s each: 1.6 s of polling per
    1 s interval cannot keep up, so polls start late and `start_lag_s` says by how much; with
    a slot each they start on time."""
    devices = [
        {
            "name": f"silent-{i}",
            "driver": "tcp_probe",
            "interval": 1.0,
            "timeout": 0.4,
            "address": tcp_servers.silent(),
            "read_banner": True,
        }
        for i in range(4)
    ]

    def lags(concurrency: int) -> list[float]:
        document = collector_document(tmp_path / str(concurrency), devices, max_backoff=0.1)
        document["collector"]["concurrency"] = concurrency
        recorder = Recorder()
        loaded = load_config_text(yaml.safe_dump(document))
        asyncio.run(Collector(loaded, observers=[recorder]).run(duration=4.0))
        return [s.fields["start_lag_s"] for v in recorder.statuses().values() for s in v]

    queued = lags(1)
    assert queued and max(queued) >= 0.35, queued
    free = lags(8)
    assert free and max(free) < 0.3, free


def test_a_large_inventory_spreads_its_first_polls_over_the_whole_interval(
    tmp_path, tcp_probe_driver, tcp_servers
):
    """Polls stay where the first one fell (every interval after it), so a large inventory
    packed into the first 5 s would poll in bursts for good: its first polls spread over the
    interval (at most ~200 starting a second), a small one's within 5 s of the start."""
    closed = tcp_servers.closed()

    def origins(count: int, interval: float) -> list[float]:
        devices = [
            {"name": f"d{i}", "driver": "tcp_probe", "interval": interval, "address": closed}
            for i in range(count)
        ]
        document = collector_document(tmp_path / str(count), devices)
        collector = Collector(load_config_text(yaml.safe_dump(document)))
        started = time.time()
        asyncio.run(collector.run(duration=0.3))
        return [p.schedule_origin - started for p in collector.pollers]

    small = origins(20, 30.0)
    assert max(small) <= 5.0 + 0.5, max(small)
    large = origins(3000, 30.0)  # 3000 / 200 a second: 15 s
    assert 13.0 <= max(large) <= 15.0 + 0.5 and min(large) >= -0.5, (min(large), max(large))

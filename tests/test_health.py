"""The collector's /metrics and /healthz (`collector.health`) on a real daemon writing to a real
influxd: the scrape parses with prometheus_client's own parser, and /healthz turns 503 while
the InfluxDB sink is down longer than `unhealthy_after`, and 200 again once it is back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from qkdtel.sims.influxd import free_port, temporary_influxd
from tests.collector_run import collector_document


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def influxd():
    with temporary_influxd() as server:
        server.create_database("qkd")
        yield server


def test_metrics_scraped_and_healthz_follows_the_sink(
    tmp_path: Path, influxd, tcp_probe_driver, tcp_servers
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    document = collector_document(
        tmp_path,
        [
            {
                "name": "probe",
                "driver": "tcp_probe",
                "interval": 0.3,
                "address": tcp_servers.banner(),
            }
        ],
        health={"listen": f"127.0.0.1:{port}", "unhealthy_after": "2s"},
        retry_max_delay="500ms",
    )
    document["sinks"] = [{"type": "influxdb_v1", "url": influxd.url, "database": "qkd"}]
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(yaml.safe_dump(document))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:

        def written() -> dict | None:
            try:
                _, body = get(f"{base}/metrics")
            except OSError:
                return None
            found = samples(body.decode())
            return (
                found
                if found.get(("qkdtel_points_written_total", (("sink", "influxdb"),)))
                else None
            )

        scraped = wait_until(written, 60, "points written, seen on /metrics")
        assert scraped[("qkdtel_polls_total", (("device", "probe"), ("result", "ok")))] >= 1
        assert scraped[("qkdtel_points_collected_total", ())] >= 1
        assert scraped[("qkdtel_points_adopted_total", ())] == 0  # no orphaned spool here
        assert ("qkdtel_points_pending", (("sink", "influxdb"),)) in scraped
        assert scraped[("qkdtel_spool_bytes", ())] > 0
        assert scraped[("qkdtel_writer_stalled", (("sink", "influxdb"),))] == 0
        status, body = get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok", body

        influxd.stop()
        stopped = time.monotonic()
        _, body = wait_until(
            lambda: (r := get(f"{base}/healthz"))[0] == 503 and r, 30, "/healthz 503"
        )
        # Not before unhealthy_after (2 s) counted from the last delivery, which may precede
        # the stop by up to the flush interval (1 s) and a write.
        assert time.monotonic() - stopped >= 0.5
        reason = json.loads(body)
        assert reason["status"] == "unhealthy"
        silent = re.search(r"sink influxdb: nothing delivered for (\d+) s", reason["problems"][0])
        assert silent is not None and int(silent.group(1)) >= 2, reason["problems"]
        assert reason["sinks"]["influxdb"]["pending"] > 0

        influxd.start()
        wait_until(lambda: get(f"{base}/healthz")[0] == 200, 60, "/healthz 200 again")
        after = samples(get(f"{base}/metrics")[1].decode())
        assert after[("qkdtel_write_errors_total", (("sink", "influxdb"),))] >= 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert influxd.count("qkd", "tcp_probe", "connect_time_s") > 0


def test_health_port_in_use_is_exit_2(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        document = collector_document(tmp_path, [], health={"listen": f"127.0.0.1:{port}"})
        cfg = tmp_path / "qkdtel.yaml"
        cfg.write_text(yaml.safe_dump(document))
        result = subprocess.run(
            [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--duration", "5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"cannot start: collector.health: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_healthz_reports_a_failed_writer_until_it_delivers_again(tmp_path: Path):
    """A sink writer that fails (INJECTED: it raises RuntimeError, as a bug would; no real
    sink fails that way on demand) makes /healthz 503 naming it, and 200 once it delivers."""
    import asyncio

    from qkdtel.config import FileSink, HealthSettings
    from qkdtel.delivery import Delivery
    from qkdtel.health import DaemonView, HealthServer
    from tests.test_delivery import run, samples, settings, wait_for
    from tests.test_writer_supervision import BuggyWriter

    port = free_port()
    sink = FileSink(type="file", name="a", path=tmp_path / "lp")
    seen: list[tuple[int, dict]] = []

    async def healthz() -> tuple[int, dict]:
        status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/healthz")
        seen.append((status, json.loads(body)))
        return seen[-1]

    async def main() -> None:
        delivery = Delivery(settings(tmp_path, flush_interval=0.05, retry_max_delay=1.0), [sink])
        await delivery.start()
        server = HealthServer(
            HealthSettings(listen=f"127.0.0.1:{port}"), DaemonView(delivery, dict, list)
        )
        server.start()
        try:
            assert (await healthz())[0] == 200
            state = delivery._sinks["a"]
            state.writer = buggy = BuggyWriter(state.writer, failures=2)
            await delivery.submit(samples(50))
            await wait_for(lambda: len(buggy.attempts) >= 1)
            status, body = await healthz()
            assert status == 503, body
            assert body["problems"] == ["sink a: its writer failed and is being restarted"]
            await wait_for(lambda: delivery.spool.pending("a") == 0)
            assert (await healthz())[0] == 200
        finally:
            await server.stop()
            await delivery.stop(5)

    run(main)

"""Delivery under faults: InfluxDB down, answering 5xx/429, rejecting part of a batch, a full
spool, and the daemon killed with SIGKILL in the middle of a flush.

The outage and the kill use the real server (stopped and restarted, a real process killed).
The 5xx/429 answers and the delayed acknowledgement come from `FaultProxy`, a small HTTP proxy in
front of the real server: a real InfluxDB cannot be made to answer 429 or 503 on demand.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from qkdtel.config import InfluxV2Sink
from qkdtel.delivery import Delivery
from qkdtel.sample import to_line
from qkdtel.sdk import Sample
from qkdtel.sims.influxd import InfluxServer, free_port
from qkdtel.sinks import InfluxV1Writer
from qkdtel.sinks.base import parse_retry_after
from qkdtel.spool import SPOOL_FILE, list_rejected
from tests.fixtures_influxdb import FaultProxy, V2Shim
from tests.test_delivery import as_rows, run, samples, settings, stored, v1, wait_for


def test_outage_every_point_arrives_in_order(
    influxdb: InfluxServer, influx_db: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    points = samples(1500)
    sent_order = [to_line(p) for p in points]

    async def main() -> None:
        delivery = Delivery(
            settings(tmp_path, batch_size=100, retry_max_delay=0.5),
            [v1(fault_proxy.url, influx_db)],
        )
        await delivery.start()
        for i in range(0, 1500, 50):
            if i == 300:
                await asyncio.to_thread(influxdb.stop)
            if i == 1200:
                assert delivery.spool.pending("influx") > 0
                await asyncio.to_thread(influxdb.start)
            await delivery.submit(points[i : i + 50])
            await asyncio.sleep(0.1)
        await wait_for(lambda: delivery.spool.pending("influx") == 0, timeout=30)
        (telemetry,) = delivery.telemetry()
        assert telemetry.fields["write_errors"] > 0
        assert telemetry.fields["points_written"] == 1500
        await delivery.stop(5)

    try:
        run(main)
    finally:
        influxdb.start()
    assert sorted(stored(influxdb, influx_db), key=lambda r: r["time"]) == as_rows(points)
    # Replayed in order: as the server received them (a batch whose answer was lost may come
    # twice), first occurrences follow the order of collection.
    received = list(dict.fromkeys(fault_proxy.forwarded_lines()))
    assert received == sent_order


def test_503_and_429_honour_retry_after(
    influxdb: InfluxServer, influx_db: str, fault_proxy: FaultProxy, tmp_path: Path, caplog
) -> None:
    fault_proxy.fail(503, retry_after="1.5")
    fault_proxy.fail(429, retry_after=formatdate(time.time() + 2, usegmt=True))
    points = samples(200)

    async def main() -> None:
        delivery = Delivery(settings(tmp_path), [v1(fault_proxy.url, influx_db)])
        await delivery.start()
        await delivery.submit(points)
        await wait_for(lambda: delivery.spool.pending("influx") == 0)
        assert delivery.telemetry()[0].fields["write_errors"] == 2
        await delivery.stop(5)

    run(main)
    (t503, s1), (t429, s2), (t_ok, s3) = fault_proxy.state.answered
    assert (s1, s2, s3) == (503, 429, 204)
    assert t429 - t503 >= 1.5
    # An HTTP date has one-second resolution: "2 s from now" may be 1.x s away.
    assert t_ok - t429 >= 1.0
    assert len(stored(influxdb, influx_db)) == 200
    assert "HTTP 503" in caplog.text and "HTTP 429" in caplog.text


def test_5xx_backs_off_exponentially_up_to_retry_max_delay(
    influx_db: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    fault_proxy.fail(500, times=4)

    async def main() -> None:
        delivery = Delivery(
            settings(tmp_path, retry_max_delay=0.8), [v1(fault_proxy.url, influx_db)]
        )
        await delivery.start()
        await delivery.submit(samples(10))
        await wait_for(lambda: delivery.spool.pending("influx") == 0)
        await delivery.stop(5)

    run(main)
    times = [t for t, _ in fault_proxy.state.answered]
    assert [s for _, s in fault_proxy.state.answered] == [500, 500, 500, 500, 204]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, [0.5, 0.8, 0.8, 0.8], strict=True):
        assert expected - 0.02 <= gap < expected + 0.4


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert 58 < (parse_retry_after(formatdate(time.time() + 60, usegmt=True)) or 0) <= 60
    assert parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_400_keeps_the_good_lines_and_sets_the_bad_ones_aside(
    api: str, influxdb: InfluxServer, influx_db: str, influx_v2: V2Shim, tmp_path: Path, caplog
) -> None:
    # `v` is an integer field in this database from now on.
    InfluxV1Writer(v1(influxdb.url, influx_db)).write(b"qkd_link,device=seed v=1i 1")
    good = samples(300)
    conflict = [Sample("qkd_link", {"device": "x"}, {"v": 2.5}, 1_000 + i) for i in range(3)]
    # A tag value ending in a backslash has no line-protocol spelling: InfluxDB cannot parse it.
    unparsable = [Sample("qkd_link", {"device": "bad\\"}, {"seq": 1}, 2_000 + i) for i in range(2)]
    batch = good[:100] + conflict[:1] + good[100:200] + unparsable + conflict[1:] + good[200:]
    sink = (
        v1(influxdb.url, influx_db, "influx")
        if api == "v1"
        else InfluxV2Sink(
            type="influxdb_v2", name="influx", url=influx_v2.url, bucket=influx_db, token="u:p"
        )
    )

    async def main() -> None:
        delivery = Delivery(settings(tmp_path, batch_size=1000), [sink])
        await delivery.start()
        await delivery.submit(batch)
        await wait_for(lambda: delivery.spool.pending("influx") == 0)
        (telemetry,) = delivery.telemetry()
        assert telemetry.fields["points_rejected"] == 5
        assert telemetry.fields["points_written"] == 300
        await delivery.stop(5)

    run(main)
    rows = stored(influxdb, influx_db)
    assert sorted((r for r in rows if r["device"] != "seed"), key=lambda r: r["time"]) == as_rows(
        good
    )
    rejected = list_rejected(tmp_path / "spool" / SPOOL_FILE)
    assert sorted(r.line for r in rejected) == sorted(to_line(s) for s in conflict + unparsable)
    reasons = {r.line: r.reason for r in rejected}
    assert all("field type conflict" in reasons[to_line(s)] for s in conflict)
    assert all("unable to parse" in reasons[to_line(s)] for s in unparsable)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all("influx" in r.getMessage() for r in errors)
    assert any("refused" in r.getMessage() for r in errors)


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
def test_spool_overflow_loses_only_what_it_counts(
    policy: str, influxdb: InfluxServer, influx_db: str, tmp_path: Path, caplog
) -> None:
    points = samples(1500)
    dead = f"http://127.0.0.1:{free_port()}"
    config = settings(tmp_path, spool_max_points=1000, overflow=policy)

    async def while_down() -> None:
        delivery = Delivery(config, [v1(dead, influx_db)])
        await delivery.start()
        accepted = [await delivery.submit(points[i : i + 500]) for i in range(0, 1500, 500)]
        (telemetry,) = delivery.telemetry()
        assert telemetry.fields["points_dropped"] == 500
        assert telemetry.fields["points_pending"] == 1000
        assert accepted == ([500, 500, 500] if policy == "drop_oldest" else [500, 500, 0])
        await delivery.stop(0.1)

    async def back_up() -> None:
        delivery = Delivery(config, [v1(influxdb.url, influx_db)])
        await delivery.start()
        await delivery.stop(10)

    run(while_down)
    losses = [r for r in caplog.records if "spool full" in r.getMessage()]
    assert losses and all(r.levelno == logging.ERROR for r in losses)
    assert "500 points lost" in caplog.text
    run(back_up)
    kept = points[500:] if policy == "drop_oldest" else points[:1000]
    assert sorted(stored(influxdb, influx_db), key=lambda r: r["time"]) == as_rows(kept)


# The daemon's side of the kill test, run as a real process: `collect` submits every point then
# idles while the writer flushes through the slow proxy; `drain` sends what the spool holds.
CHILD = """
import asyncio, json, sys
from qkdtel.config import CollectorSettings, InfluxV1Sink
from qkdtel.delivery import Delivery
from tests.test_delivery import samples

mode, spool_dir, url, db, total = sys.argv[1:6]
total = int(total)

async def main():
    settings = CollectorSettings(
        spool_dir=spool_dir, batch_size=200, flush_interval=0.05, retry_max_delay=0.5
    )
    sink = InfluxV1Sink(type="influxdb_v1", name="influx", url=url, database=db)
    delivery = Delivery(settings, [sink])
    await delivery.start()
    if mode == "collect":
        points = samples(total)
        for i in range(0, total, 250):
            await delivery.submit(points[i : i + 250])
            print("committed", i + 250, flush=True)
        await asyncio.sleep(3600)
    while delivery.spool.pending("influx"):
        await asyncio.sleep(0.05)
    print(json.dumps(delivery.telemetry()[0].fields), flush=True)
    await delivery.stop(10)

asyncio.run(main())
"""


def test_kill_9_mid_flush_loses_nothing_and_duplicates_nothing(
    influxdb: InfluxServer, influx_db: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    total = 4000
    root = Path(__file__).resolve().parent.parent
    spool_dir = str(tmp_path / "spool")
    # InfluxDB stores each batch at once but the daemon hears back only 0.3 s later: the kill
    # lands while a stored batch is still unacknowledged.
    fault_proxy.hold = 0.3
    argv = [sys.executable, "-c", CHILD, "collect", spool_dir, fault_proxy.url, influx_db]
    child = subprocess.Popen(
        [*argv, str(total)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == f"committed {total}":
                break
        else:
            pytest.fail(f"the collector died: {child.stderr.read() if child.stderr else ''}")
        deadline = time.monotonic() + 20
        while not (len(fault_proxy.state.bodies) >= 3 and fault_proxy.state.in_flight):
            assert time.monotonic() < deadline, "no write in flight"
            time.sleep(0.01)
        child.kill()  # SIGKILL
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -9
    before_restart = influxdb.count(influx_db, "qkd_link", "seq")
    assert 0 < before_restart < total  # killed mid-flush
    sent_before = set(fault_proxy.forwarded_lines())
    fault_proxy.state.bodies.clear()
    fault_proxy.hold = 0.0

    drain = subprocess.run(
        [sys.executable, "-c", CHILD, "drain", spool_dir, fault_proxy.url, influx_db, str(total)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    telemetry = json.loads(drain.stdout.strip().splitlines()[-1])
    assert telemetry["points_pending"] == 0
    # The batch whose acknowledgement the kill swallowed was sent again...
    assert sent_before & set(fault_proxy.forwarded_lines())
    # ...and yet every committed point is there exactly once, none missing.
    assert influxdb.count(influx_db, "qkd_link", "seq") == total
    rows = influxdb.query('SELECT "seq" FROM "qkd_link"', influx_db)
    assert sorted(r["seq"] for r in rows) == list(range(total))

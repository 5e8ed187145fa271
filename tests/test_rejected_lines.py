"""Lines InfluxDB refuses: found from the server's own answers, in a handful of requests, with
no line the server stored sent again, and without holding good lines up.

The InfluxDB 1.x cases run against the real influxd 1.6, with `FaultProxy` in front of it only
to count the requests and record what was sent. InfluxDB 2.x and 3.x cannot be installed here:
their answers (qkdtel.sinks.isolate cites the sources) come from `_DocumentedServer`, a fake.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from qkdtel.cli_spool import HINT, add_subcommand
from qkdtel.cli_spool import __doc__ as spool_doc
from qkdtel.delivery import Delivery
from qkdtel.sample import encode_lines
from qkdtel.sdk import Sample
from qkdtel.sims.influxd import InfluxServer
from qkdtel.sinks import (
    InfluxV1Writer,
    RejectedWriteError,
    RetryableWriteError,
    isolate,
    write_batch,
)
from qkdtel.sinks.base import raise_for_status
from qkdtel.sinks.lineprotocol import scan_line
from qkdtel.spool import SPOOL_FILE, Spool, list_rejected, requeue_rejected
from tests.fixtures_influxdb import FaultProxy
from tests.test_delivery import run, settings, v1, wait_for

HOUR_NS = 3600 * 10**9


def polls(seconds: int, devices: int, start_ns: int, measurement: str = "qkd_link") -> list[Sample]:
    """`devices` devices polled once a second for `seconds` seconds."""
    return [
        Sample(
            measurement,
            {"device": f"dev-{d}", "node": "Quevedo"},
            {"qber": (s * devices + d) / 1e4, "seq": s, "link_status": "active"},
            start_ns + s * 10**9 + d,
        )
        for s in range(seconds)
        for d in range(devices)
    ]


def conflicting(points: list[Sample], device: str) -> list[Sample]:
    """The points of `device` with `qber` as an integer (the database holds it as a float)."""
    return [
        Sample(p.measurement, p.tags, {**p.fields, "qber": 7}, p.time_ns)
        for p in points
        if p.tags["device"] == device
    ]


def seed_float_qber(influxdb: InfluxServer, db: str, time_ns: int) -> None:
    InfluxV1Writer(v1(influxdb.url, db)).write(f"qkd_link,device=seed qber=0.5 {time_ns}".encode())


def stored_times(influxdb: InfluxServer, db: str, measurement: str = "qkd_link") -> set[int]:
    rows = influxdb.query(f"SELECT * FROM \"{measurement}\" WHERE device != 'seed'", db)
    return {r["time"] for r in rows}


def requests(proxy: FaultProxy) -> int:
    with proxy.state.lock:
        return len(proxy.state.answered)


# -- InfluxDB 1.6, through the whole delivery --------------------------------------------------


def test_a_minute_with_one_conflicting_field_costs_a_handful_of_requests(
    influxdb: InfluxServer, influx_db: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    now = time.time_ns() - 120 * 10**9
    seed_float_qber(influxdb, influx_db, now - 1)
    minute = polls(60, 50, now)  # 3,000 lines
    bad_device = "dev-7"
    bad = conflicting(minute, bad_device)
    points = [p for p in minute if p.tags["device"] != bad_device] + bad
    points.sort(key=lambda p: p.time_ns)

    async def main() -> None:
        delivery = Delivery(settings(tmp_path, batch_size=5000), [v1(fault_proxy.url, influx_db)])
        await delivery.start()
        for second in range(60):  # as the poller hands them over, one second at a time
            await delivery.submit(points[second * 50 : (second + 1) * 50])
        await wait_for(lambda: delivery.spool.pending("influx") == 0)
        (telemetry,) = delivery.telemetry()
        assert telemetry.fields["points_rejected"] == len(bad) == 60
        assert telemetry.fields["points_written"] == len(points) - len(bad)
        await delivery.stop(5)

    run(main)
    sent = Counter(fault_proxy.forwarded_lines())
    assert set(sent.values()) == {1}, "a line the server had stored was sent again"
    assert sum(sent.values()) == len(points)
    # One or two requests per batch, however the 60 submits fall into batches (a few, by the
    # writer's timing); isolating by bisection took ~2,000 here.
    assert requests(fault_proxy) <= 20
    good = {p.time_ns for p in points if p.tags["device"] != bad_device}
    assert stored_times(influxdb, influx_db) == good
    rejected = list_rejected(tmp_path / "spool" / SPOOL_FILE)
    assert sorted(r.line for r in rejected) == sorted(encode_lines(bad))
    assert all(
        r.reason == 'HTTP 400: field type conflict: input field "qber" on measurement '
        '"qkd_link" is type integer, already exists as type float'
        for r in rejected
    )


def test_requeued_bad_lines_do_not_hold_good_ones_up(
    influxdb: InfluxServer, influx_db: str, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    now = time.time_ns() - 600 * 10**9
    seed_float_qber(influxdb, influx_db, now - 1)
    bad = conflicting(polls(243, 1, now), "dev-0")
    spool_path = tmp_path / "spool" / SPOOL_FILE
    grace = 3.0

    async def main() -> None:
        delivery = Delivery(settings(tmp_path, batch_size=5000), [v1(fault_proxy.url, influx_db)])
        await delivery.start()
        await delivery.submit(bad)
        await wait_for(lambda: delivery.telemetry()[0].fields["points_rejected"] == 243)
        before = requests(fault_proxy)
        assert await asyncio.to_thread(requeue_rejected, spool_path) == 243
        delays = []
        for second in range(20):  # good points keep flowing while the requeued lines go out
            batch = polls(1, 30, now + (second + 300) * 10**9, measurement="qkd_good")
            await delivery.submit(batch)
            submitted = time.monotonic()
            times = {p.time_ns for p in batch}
            await wait_for(lambda t=times: t <= stored_times(influxdb, influx_db, "qkd_good"))
            delays.append(time.monotonic() - submitted)
        await wait_for(lambda: delivery.telemetry()[0].fields["points_rejected"] == 486)
        # O(1): one request per batch, whatever the number of bad lines in it.
        assert requests(fault_proxy) - before <= 20 + 3
        stopping = time.monotonic()
        await delivery.submit(bad)  # still bad: refused again while stopping
        await delivery.stop(grace)
        assert time.monotonic() - stopping < grace
        assert max(delays) < 2.5, delays

    run(main)
    rejected = list_rejected(spool_path)
    assert len(rejected) >= 243
    assert all("field type conflict" in r.reason for r in rejected)
    assert len(stored_times(influxdb, influx_db, "qkd_good")) == 20 * 30


# -- InfluxDB 1.6, one batch at a time ---------------------------------------------------------


def test_parse_errors_behind_a_conflict_are_found_with_one_more_request(
    influxdb: InfluxServer, influx_db: str, fault_proxy: FaultProxy
) -> None:
    # 1.6 answers a batch with both only with the conflict (dropped=N counts the conflicts):
    # the unparsable lines would be lost without a word.
    now = time.time_ns() - 60 * 10**9
    seed_float_qber(influxdb, influx_db, now - 1)
    good = polls(20, 10, now)
    bad = conflicting(good[:30], "dev-1")
    # A tag value ending in a backslash has no line-protocol spelling: InfluxDB cannot parse it.
    unparsable = [Sample("qkd_link", {"device": "bad\\"}, {"seq": 1}, now + i) for i in range(2)]
    lines = encode_lines(good[:100] + bad + unparsable + good[100:])
    writer = InfluxV1Writer(v1(fault_proxy.url, influx_db))

    refused = dict(write_batch(writer, "\n".join(lines).encode(), lambda: lines))

    assert set(refused) == set(encode_lines(bad + unparsable))
    assert all("field type conflict" in refused[x] for x in encode_lines(bad))
    assert all("unable to parse" in refused[x] for x in encode_lines(unparsable))
    assert requests(fault_proxy) == 2
    assert Counter(fault_proxy.forwarded_lines()) == Counter(lines + encode_lines(unparsable))
    assert stored_times(influxdb, influx_db) == {p.time_ns for p in good}


def test_two_conflicts_need_one_more_request_each(
    influxdb: InfluxServer, influx_db: str, fault_proxy: FaultProxy
) -> None:
    # The answer names the first conflict; dropped=N counts both: the count tells.
    now = time.time_ns() - 60 * 10**9
    seed_float_qber(influxdb, influx_db, now - 1)
    InfluxV1Writer(v1(influxdb.url, influx_db)).write(f"qkd_other v=1i {now - 1}".encode())
    good = polls(10, 10, now)
    bad = conflicting(good, "dev-3") + [
        Sample("qkd_other", {}, {"v": 1.5}, now + i) for i in (1, 2)
    ]
    lines = encode_lines(good[:50] + bad + good[50:])
    writer = InfluxV1Writer(v1(fault_proxy.url, influx_db))

    refused = dict(write_batch(writer, "\n".join(lines).encode(), lambda: lines))

    assert set(refused) == set(encode_lines(bad))
    assert (
        'measurement "qkd_other" is type float, already exists as type integer'
        in (refused[encode_lines(bad[-1:])[0]])
    )
    assert requests(fault_proxy) == 2
    assert stored_times(influxdb, influx_db) == {p.time_ns for p in good}


def test_a_field_named_time_is_refused_in_one_request(
    influxdb: InfluxServer, influx_db: str, fault_proxy: FaultProxy
) -> None:
    now = time.time_ns() - 60 * 10**9
    good = polls(10, 10, now)
    bad = [Sample("qkd_link", {"device": "t"}, {"time": 5}, now + i) for i in (1, 2, 3)]
    lines = encode_lines(good[:50] + bad + good[50:])
    writer = InfluxV1Writer(v1(fault_proxy.url, influx_db))

    refused = dict(write_batch(writer, "\n".join(lines).encode(), lambda: lines))

    assert set(refused) == set(encode_lines(bad))
    assert all("invalid field name" in why for why in refused.values())
    assert requests(fault_proxy) == 1
    assert stored_times(influxdb, influx_db) == {p.time_ns for p in good}


def test_points_beyond_retention_and_those_a_conflict_hides(
    influxdb: InfluxServer, fault_proxy: FaultProxy
) -> None:
    influxdb.query("CREATE DATABASE short_rp WITH DURATION 1h NAME hour")
    now = time.time_ns()
    fresh = polls(5, 10, now - 60 * 10**9)
    old = polls(1, 4, now - 2 * HOUR_NS)
    writer = InfluxV1Writer(v1(fault_proxy.url, "short_rp"))
    lines = encode_lines(old[:2] + fresh + old[2:])

    refused = dict(write_batch(writer, "\n".join(lines).encode(), lambda: lines))

    assert set(refused) == set(encode_lines(old))
    assert all("beyond retention policy" in why for why in refused.values())
    assert requests(fault_proxy) == 1

    # With a conflict in the same request 1.6 reports only the conflict; the old lines are
    # sent again on their own to learn their fate.
    seed_float_qber(influxdb, "short_rp", now - 10)
    bad = conflicting(fresh, "dev-2")
    lines = encode_lines(fresh + bad + old)
    refused = dict(write_batch(writer, "\n".join(lines).encode(), lambda: lines))
    assert set(refused) == set(encode_lines(bad + old))
    assert requests(fault_proxy) == 3


def test_drop_series_does_not_clear_a_type_conflict_drop_measurement_does(
    influxdb: InfluxServer, influx_db: str
) -> None:
    # What `qkdtel spool` advises, checked on the real server.
    writer = InfluxV1Writer(v1(influxdb.url, influx_db))
    writer.write(b"qkd_link,device=a qber=1i 1")
    influxdb.query("DROP SERIES FROM qkd_link", influx_db)
    with pytest.raises(RejectedWriteError, match="field type conflict"):
        writer.write(b"qkd_link,device=a qber=0.5 2")
    influxdb.query("DROP MEASUREMENT qkd_link", influx_db)
    writer.write(b"qkd_link,device=a qber=0.5 2")
    assert "DROP SERIES does not" in (spool_doc or "")
    assert "DROP MEASUREMENT" in (spool_doc or "")


def test_spool_command_advises_what_clears_a_type_conflict(tmp_path: Path, capsys) -> None:
    spool_dir = tmp_path / "spool"
    config = tmp_path / "qkdtel.yaml"
    config.write_text(f"collector:\n  spool_dir: {spool_dir}\n")
    spool = Spool(spool_dir / SPOOL_FILE, ["influx"], 10_000)
    spool.append(["m v=1 1", "m v=2i 2"])
    batch = spool.read("influx", 10)
    assert batch is not None
    why = 'HTTP 400: field type conflict: input field "v" on measurement "m" is type integer'
    spool.ack("influx", batch, [("m v=2i 2", why)])
    spool.close()
    parser = argparse.ArgumentParser(prog="qkdtel")
    add_subcommand(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(["spool", "rejected", "-c", str(config)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert HINT in out.replace("\n", " ")
    with pytest.raises(SystemExit):
        parser.parse_args(["spool", "rejected", "--help"])
    assert "DROP SERIES does not clear it" in " ".join(capsys.readouterr().out.split())


# -- servers that say nothing usable: bounded bisection ----------------------------------------


class _SilentServer:
    """FAKE (a real server cannot be made to): answers 400 with no detail to any body holding
    a line with `bad`, stores the others; counts requests, can be slow."""

    name = "silent"

    def __init__(self, delay: float = 0.0) -> None:
        self.stored: list[str] = []
        self.requests = 0
        self.delay = delay

    def write(self, body: bytes) -> None:
        self.requests += 1
        time.sleep(self.delay)
        lines = body.decode().split("\n")
        if any("bad" in x for x in lines):
            raise_for_status(400, None, b"", [])
        self.stored += lines


def _lines(n: int, bad_at: set[int]) -> list[str]:
    return [f"m,k={'bad' if i in bad_at else 'ok'} v={i}i {i}" for i in range(n)]


def test_bisection_finds_a_few_bad_lines_within_its_budget() -> None:
    lines = _lines(1000, {17, 600})
    server = _SilentServer()
    refused = write_batch(server, "\n".join(lines).encode(), lambda: lines)
    assert [x for x, _ in refused] == [lines[17], lines[600]]
    assert sorted(server.stored) == sorted(set(lines) - {lines[17], lines[600]})
    assert server.requests <= 1 + 4 * 10 + isolate.EXTRA_REQUESTS


def test_bisection_stops_at_its_request_budget() -> None:
    lines = _lines(1000, set(range(0, 1000, 37)))
    server = _SilentServer()
    refused = write_batch(server, "\n".join(lines).encode(), lambda: lines)
    assert server.requests == 1 + 4 * 10 + isolate.EXTRA_REQUESTS
    stopped = [x for x, why in refused if why.startswith("isolation stopped after")]
    assert stopped and set(lines) == {x for x, _ in refused} | set(server.stored)
    assert {x for x in lines if "bad" in x} <= {x for x, _ in refused}


def test_bisection_stops_at_its_time_budget(monkeypatch) -> None:
    monkeypatch.setattr(isolate, "ISOLATION_SECONDS", 0.5)
    lines = _lines(1000, {3, 500})
    server = _SilentServer(delay=0.1)
    started = time.monotonic()
    refused = write_batch(server, "\n".join(lines).encode(), lambda: lines)
    assert time.monotonic() - started < 0.5 + 1.0  # the bisection alone would take ~100 s
    assert any(why.startswith("isolation stopped") for _, why in refused)


def test_a_stopped_writer_sends_nothing_more() -> None:
    lines = _lines(1000, {3})
    server = _SilentServer()
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(RetryableWriteError, match="stopped"):
        write_batch(server, "\n".join(lines).encode(), lambda: lines, stopped)
    assert server.requests == 1


# -- InfluxDB 2.x and 3.x, as documented -------------------------------------------------------


class _DocumentedServer:
    """FAKE of InfluxDB 2.x / 3.x write answers (none can be installed here), in the exact
    formats their documentation and issue reports show (see qkdtel.sinks.isolate): a parse
    error refuses the whole request naming the first bad line; a type conflict stores the rest
    and answers 422 with dropped=N."""

    name = "v2"

    def __init__(self, version: int) -> None:
        self.version = version
        self.stored: list[str] = []
        self.requests = 0

    def write(self, body: bytes) -> None:
        self.requests += 1
        lines = body.decode().split("\n")
        for number, line in enumerate(lines, 1):
            if scan_line(line) is None:
                if self.version == 3:
                    answer = f'{{"code":"invalid","line":{number},"message":"bad line"}}'
                else:
                    quoted = line.replace("\\", "\\\\").replace('"', '\\"')
                    answer = (
                        f'{{"code":"invalid","message":"unable to parse \'{quoted}\': '
                        f'invalid tag format"}}'
                    )
                raise_for_status(400, None, answer.encode(), [])
        ints = [x for x in lines if re.search(r"qber=\d+i", x)]
        self.stored += [x for x in lines if x not in ints]
        if ints:
            message = (
                "failure writing points to database: partial write: field type conflict: "
                'input field \\"qber\\" on measurement \\"qkd_link\\" is type integer, '
                f"already exists as type float dropped={len(ints)}"
            )
            raise_for_status(
                422, None, f'{{"code":"unprocessable entity","message":"{message}"}}'.encode(), []
            )


@pytest.mark.parametrize("version", [2, 3])
def test_v2_and_v3_answers(version: int) -> None:
    now = time.time_ns()
    good = polls(10, 10, now)
    bad = conflicting(good, "dev-4")
    unparsable = [Sample("qkd_link", {"device": "bad\\"}, {"seq": 1}, now + i) for i in range(2)]
    lines = encode_lines(good[:40] + unparsable[:1] + bad + good[40:] + unparsable[1:])
    server = _DocumentedServer(version)

    refused = dict(write_batch(server, "\n".join(lines).encode(), lambda: lines))

    assert set(refused) == set(encode_lines(bad + unparsable))
    assert all("field type conflict" in refused[x] for x in encode_lines(bad))
    assert sorted(server.stored) == sorted(encode_lines(good))
    assert server.requests == 3  # parse error, parse error, the conflict's partial write

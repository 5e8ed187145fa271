"""Delivery against a real InfluxDB 1.6: v1 and v2 writers, several sinks, flushing, the file
store, TLS, secrets, telemetry and the `qkdtel spool rejected` command."""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
import math
import re
import sqlite3
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import urllib3
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from qkdtel.cli_spool import add_subcommand
from qkdtel.config import CollectorSettings, FileSink, InfluxV1Sink, InfluxV2Sink
from qkdtel.delivery import Delivery
from qkdtel.sample import encode_lines, to_line
from qkdtel.sdk import Sample
from qkdtel.sims.influxd import InfluxServer, free_port
from qkdtel.sinks import FileWriter, InfluxV1Writer, RetryableWriteError
from qkdtel.spool import SPOOL_FILE, Spool, list_rejected
from tests.fixtures_influxdb import FaultProxy, V2Shim

T0 = 1_700_000_000_000_000_000
METRICS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


HEADER = "# DML\n# CONTEXT-DATABASE: qkdtel\n"
"""What the local store writes first in each file (`influx -import` needs it)."""


def samples(n: int, start: int = 0, measurement: str = "qkd_link") -> list[Sample]:
    """`n` distinct points of every field type, one second apart."""
    return [
        Sample(
            measurement,
            {"device": f"alice-{i % 3}", "node": "Quevedo"},
            {
                "seq": i,
                "qber": i / 1000,
                "key_generating": i % 2 == 0,
                "link_status": "active" if i % 2 else "pending",
            },
            T0 + i * 1_000_000_000,
        )
        for i in range(start, start + n)
    ]


def settings(tmp_path: Path, **overrides: object) -> CollectorSettings:
    values: dict[str, object] = {
        "spool_dir": tmp_path / "spool",
        "batch_size": 500,
        "flush_interval": 0.1,
        "retry_max_delay": 1.0,
    }
    values.update(overrides)
    return CollectorSettings.model_validate(values)


def v1(url: str, database: str, name: str = "influx", **extra: object) -> InfluxV1Sink:
    return InfluxV1Sink.model_validate(
        {"type": "influxdb_v1", "name": name, "url": url, "database": database, **extra}
    )


async def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `check` until it holds; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


def stored(influxdb: InfluxServer, db: str, measurement: str = "qkd_link") -> list[dict]:
    """Every point of `measurement`, without the fields other points have and it lacks."""
    rows = influxdb.query(f'SELECT * FROM "{measurement}" GROUP BY *', db)
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def as_rows(points: list[Sample]) -> list[dict]:
    return sorted(
        ({**p.tags, **p.fields, "time": p.time_ns} for p in points), key=lambda r: r["time"]
    )


def test_v1_sink_stores_every_point_unchanged(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    points = samples(1234)

    async def main() -> None:
        delivery = Delivery(settings(tmp_path), [v1(influxdb.url, influx_db)])
        await delivery.start()
        assert await delivery.submit(points) == 1234
        await wait_for(lambda: delivery.spool.pending("influx") == 0)
        (telemetry,) = delivery.telemetry()
        assert telemetry.fields["points_collected"] == 1234
        assert telemetry.fields["points_written"] == 1234
        assert telemetry.fields["write_errors"] == 0
        assert telemetry.fields["write_latency_s"] > 0
        await delivery.stop(5)

    run(main)
    rows = sorted(stored(influxdb, influx_db), key=lambda r: r["time"])
    assert rows == as_rows(points)
    # Every acknowledgement reached the disk (they are committed in groups while batches
    # stream out, and all of them once the writer has nothing left to send).
    spool = Spool(tmp_path / "spool" / SPOOL_FILE, ["influx"], 10_000)
    assert (spool.pending("influx"), spool.size()) == (0, 0)
    spool.close()


def test_v2_sink_writes_through_influxdb_client(
    influxdb: InfluxServer, influx_db: str, influx_v2: V2Shim, tmp_path: Path
) -> None:
    points = samples(700)
    sink = InfluxV2Sink(
        type="influxdb_v2", name="v2", url=influx_v2.url, bucket=f"{influx_db}/autogen", token="u:p"
    )

    async def main() -> None:
        delivery = Delivery(settings(tmp_path), [sink])
        await delivery.start()
        await delivery.submit(points)
        await delivery.stop(10)

    run(main)
    assert sorted(stored(influxdb, influx_db), key=lambda r: r["time"]) == as_rows(points)


def test_telemetry_has_exactly_the_fields_of_the_metrics_contract(tmp_path: Path) -> None:
    section = METRICS.read_text().split("## qkdtel_collector", 1)[1].split("\n## ", 1)[0]
    contract = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| (\w+) \| (tag|field) ?(\w*) \|", section, re.M)
    }
    fields = {name: kind for name, (what, kind) in contract.items() if what == "field"}
    tags = {name for name, (what, _) in contract.items() if what == "tag"}

    async def main() -> None:
        sinks = [
            FileSink(type="file", name="a", path=tmp_path / "a"),
            FileSink(type="file", name="b", path=tmp_path / "b"),
        ]
        delivery = Delivery(settings(tmp_path), sinks)
        await delivery.start()
        points = delivery.telemetry()
        await delivery.stop(1)
        assert [p.tags["sink"] for p in points] == ["a", "b"]
        for point in points:
            assert point.measurement == "qkdtel_collector"
            assert set(point.tags) == tags - {"shard"}  # only when sharded: tests/test_shard.py
            # polls_running and worker_restarts are the daemon's to fill in.
            assert set(point.fields) == set(fields) - {"polls_running", "worker_restarts"}
            for name, value in point.fields.items():
                assert type(value) is {"int": int, "float": float, "bool": bool}[fields[name]], name

    run(main)


def test_a_sink_that_is_down_does_not_hold_back_another(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    points = samples(900)

    async def first_run() -> None:
        delivery = Delivery(
            settings(tmp_path), [v1(influxdb.url, influx_db, "up"), v1(dead, influx_db, "down")]
        )
        await delivery.start()
        await delivery.submit(points)
        await wait_for(lambda: delivery.spool.pending("up") == 0)
        await wait_for(lambda: delivery.telemetry()[1].fields["write_errors"] >= 2)
        up, down = delivery.telemetry()
        assert up.fields["points_written"] == 900
        assert down.fields["points_written"] == 0
        assert down.fields["points_pending"] == 900
        await delivery.stop(0.2)

    run(first_run)
    assert len(stored(influxdb, influx_db)) == 900

    # The same sink, reachable now: it gets every point, from the spool.
    other = f"{influx_db}_late"
    influxdb.create_database(other)

    async def second_run() -> None:
        delivery = Delivery(
            settings(tmp_path), [v1(influxdb.url, influx_db, "up"), v1(influxdb.url, other, "down")]
        )
        await delivery.start()
        await delivery.stop(10)

    run(second_run)
    assert sorted(stored(influxdb, other), key=lambda r: r["time"]) == as_rows(points)


def test_points_wait_at_most_flush_interval_unless_a_batch_is_full(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    async def main() -> None:
        delivery = Delivery(
            settings(tmp_path, flush_interval=3.0, batch_size=100), [v1(influxdb.url, influx_db)]
        )
        await delivery.start()
        loop = asyncio.get_running_loop()
        await delivery.submit(samples(1))
        started = loop.time()
        await asyncio.sleep(0.5)
        assert stored(influxdb, influx_db) == []  # still lingering for more points
        await wait_for(lambda: len(stored(influxdb, influx_db)) == 1, timeout=8)
        assert 2.7 < loop.time() - started < 6.0

        # A full batch goes at once, long before flush_interval (room left for a loaded machine).
        started = loop.time()
        await delivery.submit(samples(100, start=1))
        await wait_for(lambda: len(stored(influxdb, influx_db)) == 101, timeout=5)
        assert loop.time() - started < 2.5
        await delivery.stop(5)

    run(main)


def test_stop_keeps_what_it_could_not_send_for_the_next_start(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def first_run() -> None:
        delivery = Delivery(settings(tmp_path), [v1(dead, influx_db)])
        await delivery.start()
        await delivery.submit(samples(300))
        await delivery.stop(0.3)

    run(first_run)
    spool = Spool(tmp_path / "spool" / SPOOL_FILE, ["influx"], 10_000)
    assert spool.pending("influx") == 300
    spool.close()

    async def second_run() -> None:
        delivery = Delivery(settings(tmp_path), [v1(influxdb.url, influx_db)])
        await delivery.start()
        await delivery.stop(10)

    run(second_run)
    assert len(stored(influxdb, influx_db)) == 300


def test_samples_with_nothing_storable_are_not_spooled(tmp_path: Path) -> None:
    async def main() -> None:
        delivery = Delivery(settings(tmp_path), [FileSink(type="file", path=tmp_path / "lp")])
        await delivery.start()
        accepted = await delivery.submit(
            [Sample("m", {}, {"v": float("nan")}, 1), Sample("m", {}, {"v": 1.5}, 2)]
        )
        await delivery.stop(5)
        assert accepted == 1

    run(main)
    (written,) = (tmp_path / "lp").glob("*.lp")
    assert written.read_text() == f"{HEADER}m v=1.5 2\n"


def test_file_sink_rotates_and_its_files_import_into_influxdb_1x(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    points = samples(400)
    directory = tmp_path / "lp"

    async def main() -> None:
        sink = FileSink(type="file", path=directory, rotate_bytes=8192, database=influx_db)
        delivery = Delivery(settings(tmp_path, batch_size=50), [sink])
        await delivery.start()
        await delivery.submit(points)
        await delivery.stop(10)

    run(main)
    files = sorted(directory.glob("qkdtel-*.lp"))
    assert len(files) > 3
    # Rotation happens between batches: no file grows past rotate_bytes by more than one batch.
    assert all(f.stat().st_size < 8192 + 50 * 200 for f in files)
    header = f"# DML\n# CONTEXT-DATABASE: {influx_db}\n"
    assert all(f.read_text().startswith(header) for f in files)
    content = "".join(f.read_text().removeprefix(header) for f in files)
    assert content.splitlines() == [to_line(p) for p in points]

    # The import command of the FileWriter docstring and README, each file as written.
    for file in files:
        subprocess.run(
            [
                *("influx", "-host", "127.0.0.1", "-port", str(influxdb.port)),
                *("-import", f"-path={file}", "-precision=ns"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    assert sorted(stored(influxdb, influx_db), key=lambda r: r["time"]) == as_rows(points)


def test_file_sink_trims_a_line_a_crash_cut_short(tmp_path: Path) -> None:
    directory = tmp_path / "lp"
    directory.mkdir()
    torn = directory / "qkdtel-20250101T000000.000000Z-0.lp"
    torn.write_bytes(b"m v=1 1\nm v=2 2\nm v=3")
    writer = FileWriter(FileSink(type="file", path=directory))
    writer.write(b"m v=3 3")
    writer.close()
    assert torn.read_bytes() == b"m v=1 1\nm v=2 2\n"
    assert writer.current.read_bytes() == f"{HEADER}m v=3 3\n".encode()


def test_secrets_stay_out_of_logs_and_errors(
    influx_db: str, influx_v2: V2Shim, fault_proxy: FaultProxy, tmp_path: Path, caplog
) -> None:
    password, token, in_url = "pa55-word-1", "t0ken-secret-2", "url-secret-3"
    fault_proxy.fail(503, times=1000)
    port = int(fault_proxy.url.rsplit(":", 1)[1])
    sinks = [
        v1(fault_proxy.url, influx_db, "v1", username="qkd", password=password),
        v1(f"http://qkd:{in_url}@127.0.0.1:{free_port()}", influx_db, "v1-down"),
        InfluxV2Sink(
            type="influxdb_v2", name="v2", url=f"http://127.0.0.1:{port}", bucket="b", token=token
        ),
    ]
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        delivery = Delivery(settings(tmp_path), sinks)
        await delivery.start()
        await delivery.submit(samples(10))
        await wait_for(lambda: all(p.fields["write_errors"] >= 2 for p in delivery.telemetry()))
        await delivery.stop(0.2)

    run(main)
    assert "503" in caplog.text and "v1-down" in caplog.text
    for secret in (password, token, in_url):
        assert secret not in caplog.text
    with pytest.raises(RetryableWriteError) as raised:
        InfluxV1Writer(sinks[1]).write(b"m v=1 1")
    assert in_url not in str(raised.value) and in_url not in repr(raised.value.args)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_is_verified_by_default_and_ca_file_is_used(
    influxdb: InfluxServer, influx_db: str, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    proxy = FaultProxy(influxdb.port, tls=context)
    try:
        with pytest.raises(RetryableWriteError, match="CERTIFICATE_VERIFY_FAILED"):
            InfluxV1Writer(v1(proxy.url, influx_db)).write(b"m v=1 1")
        InfluxV1Writer(v1(proxy.url, influx_db, ca_file=cert)).write(b"m v=2 2")
        with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
            InfluxV1Writer(v1(proxy.url, influx_db, verify_tls=False)).write(b"m v=3 3")
    finally:
        proxy.close()
    assert [r["v"] for r in stored(influxdb, influx_db, "m")] == [2, 3]


def test_spool_rejected_command_lists_and_requeues(tmp_path: Path, capsys) -> None:
    spool_dir = tmp_path / "spool"
    config = tmp_path / "qkdtel.yaml"
    config.write_text(f"collector:\n  spool_dir: {spool_dir}\n")
    spool = Spool(spool_dir / SPOOL_FILE, ["influx"], 10_000)
    spool.append(["m v=1 1", "m v=2 2"])
    batch = spool.read("influx", 10)
    assert batch is not None
    spool.ack("influx", batch, [("m v=2 2", "HTTP 400: field type conflict")])

    parser = argparse.ArgumentParser(prog="qkdtel")
    add_subcommand(parser.add_subparsers(dest="command", required=True))

    def qkdtel(*argv: str) -> int:
        args = parser.parse_args(argv)
        return args.func(args)

    assert qkdtel("spool", "rejected", "-c", str(config)) == 0
    out = capsys.readouterr().out
    assert "influx" in out and "HTTP 400: field type conflict" in out and "m v=2 2" in out
    assert "1 rejected line(s)" in out

    assert qkdtel("spool", "rejected", "-c", str(config), "--requeue") == 0
    assert "requeued 1 line(s)" in capsys.readouterr().out
    assert list_rejected(spool_dir / SPOOL_FILE) == []
    spool.refresh()
    again = spool.read("influx", 10)
    assert again is not None and again.lines == ["m v=2 2"]
    spool.close()


def test_spool_rejected_command_refuses_a_spool_of_the_old_layout(tmp_path: Path, capsys) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    config = tmp_path / "qkdtel.yaml"
    config.write_text(f"collector:\n  spool_dir: {spool_dir}\n")
    old = sqlite3.connect(spool_dir / SPOOL_FILE)
    old.executescript(
        """
        CREATE TABLE points (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);
        CREATE TABLE cursors (sink TEXT PRIMARY KEY, acked_id INTEGER NOT NULL);
        CREATE TABLE rejected (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,
            time_ns INTEGER NOT NULL, reason TEXT NOT NULL, line TEXT NOT NULL);
        """
    )
    old.close()
    parser = argparse.ArgumentParser(prog="qkdtel")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["spool", "rejected", "-c", str(config)])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert str(spool_dir / SPOOL_FILE) in err.replace("\n", "") and "one-row-per-point" in err


def _reference_line(sample: Sample) -> str:
    """The line of `sample` as a straightforward encoder, written independently of the one in
    qkdtel.sample (no caches, no inlined types): tags sorted and escaped, empty ones left out,
    fields in order, NaN and infinities left out, tab- or NUL-led field keys not first."""
    key = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
    field_key = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", '"': r"\""})
    tags = "".join(
        f",{str(k).translate(key)}={str(v).translate(key)}"
        for k, v in sorted(sample.tags.items())
        if k != "" and v != ""
    )
    fields = []
    for k, v in sample.fields.items():
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, int):
            text = f"{int(v)}i"
        elif isinstance(v, float):
            if not math.isfinite(v):
                continue
            text = repr(float(v))
        else:
            text = '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        fields.append(f"{str(k).translate(field_key)}={text}")
    if not fields:
        return ""
    if fields[0][0] in "\t\0":
        fields.sort(key=lambda f: f[0] in "\t\0")
    measurement = sample.measurement.translate(str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"}))
    return f"{measurement}{tags} {','.join(fields)} {sample.time_ns}"


class _Level(enum.IntEnum):
    HIGH = 3


_FIELD_KEYS = st.lists(
    st.sampled_from(["a", "b c", "\tlead", "\0lead", 'd="', "", "é", "{x}", "k\\"]),
    min_size=1,
    max_size=4,
    unique=True,
)
_VALUES = st.one_of(
    st.text(max_size=6),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
    st.just(_Level.HIGH),
)


@hyp_settings(max_examples=300, deadline=None)
@given(keys=_FIELD_KEYS, rows=st.lists(st.lists(_VALUES, min_size=4, max_size=4), max_size=6))
def test_the_encoder_writes_what_the_reference_encoder_writes(keys, rows) -> None:
    # Rows of the same field keys whose value types vary from row to row (cached field keys met
    # with values of other types, subclasses, NaN): the encoder agrees with the reference.
    points = [
        Sample("m x", {"dev": "a,b", "": "x", "e": ""}, dict(zip(keys, row, strict=False)), i)
        for i, row in enumerate(rows)
    ]
    expected = [line for line in map(_reference_line, points) if line]
    assert encode_lines(points) == expected
    assert encode_lines(points) == expected  # again, from the caches
    assert [to_line(p) for p in points] == [_reference_line(p) for p in points]

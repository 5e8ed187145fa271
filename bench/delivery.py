"""Throughput of the delivery path into a real InfluxDB, beside curl posting the same data.

    python bench/delivery.py [--points 200000] [--batch-size 5000] [--rounds 3]

Starts its own `influxd` (as the tests do), then, in the same run and for each round:
- curl: the line protocol of every sample, cut into files of `--batch-size` lines, posted by one
  curl process (`--data-binary @file`, one `--next` per batch, one kept-alive connection) to
  `/write`: the floor cost of getting these bytes into this server;
- delivery: the same samples through `Delivery` -- encoded, committed to the SQLite spool
  (fsync'ed, one transaction per submit of `--batch-size` samples), read back and written by the
  v1 writer -- timed from the first submit until the last point is acknowledged.
Each side writes into a database of its own. Prints the best round of each and the ratio
(target: delivery >= 0.9x curl). Not a unit test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

from qkdtel.config import CollectorSettings, InfluxV1Sink
from qkdtel.delivery import Delivery
from qkdtel.sample import Sample
from qkdtel.sims.influxd import InfluxServer

T0 = 1_700_000_000_000_000_000


def make_samples(n: int) -> list[Sample]:
    """qkd_link points as 100 modules would report them, one per module per timestamp."""
    return [
        Sample(
            "qkd_link",
            {
                "device": f"qkd-{i % 100}",
                "node": "Quevedo",
                "peer": "Madrid",
                "link": str(i % 100),
                "vendor": "idq",
                "technology": "dv",
                "protocol": "cow",
            },
            {
                "link_status": "active",
                "key_generating": True,
                "secret_key_rate_bps": 1200.5 + i % 977,
                "qber": 0.021 + (i % 13) / 1000,
                "visibility": 0.987,
                "key_store_bits": 1_000_000 + i,
            },
            T0 + (i // 100) * 1_000_000_000,
        )
        for i in range(n)
    ]


def bench_curl(server: InfluxServer, samples: list[Sample], batch: int, work: Path) -> float:
    """Seconds curl takes to post the samples' line protocol in batches of `batch` lines."""
    db = f"curl_{time.monotonic_ns()}"
    server.create_database(db)
    lines = [s.to_line() for s in samples]
    files = []
    for n, start in enumerate(range(0, len(lines), batch)):
        path = work / f"batch-{n:05d}.lp"
        path.write_text("\n".join(lines[start : start + batch]))
        files.append(path)
    url = f"{server.url}/write?db={db}&precision=ns"
    argv = ["curl", "--silent", "--show-error", "--fail"]
    for i, path in enumerate(files):
        argv += (["--next"] if i else []) + ["--fail", "--data-binary", f"@{path}", url]
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    elapsed = time.perf_counter() - started
    stored = server.count(db, "qkd_link", "qber")
    if stored != len(samples):
        raise SystemExit(f"curl: {stored} points stored of {len(samples)}")
    return elapsed


def bench_delivery(server: InfluxServer, samples: list[Sample], batch: int, work: Path) -> float:
    """Seconds from the first submit until InfluxDB has acknowledged every point."""
    db = f"delivery_{time.monotonic_ns()}"
    server.create_database(db)
    settings = CollectorSettings(
        spool_dir=work / f"spool-{db}", batch_size=batch, spool_max_points=len(samples) + 1000
    )
    sink = InfluxV1Sink(type="influxdb_v1", name="influx", url=server.url, database=db)

    async def run() -> float:
        delivery = Delivery(settings, [sink])
        await delivery.start()
        started = time.perf_counter()
        for start in range(0, len(samples), batch):
            await delivery.submit(samples[start : start + batch])
        while delivery.spool.pending("influx"):
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - started
        await delivery.stop(10)
        return elapsed

    elapsed = asyncio.run(run())
    stored = server.count(db, "qkd_link", "qber")
    if stored != len(samples):
        raise SystemExit(f"delivery: {stored} points stored of {len(samples)}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    samples = make_samples(args.points)
    with tempfile.TemporaryDirectory(prefix="qkdtel-bench-") as tmp:
        work = Path(tmp)
        (work / "influxd").mkdir()
        server = InfluxServer(work / "influxd")
        server.start()
        try:
            curl_times, delivery_times, encode_times = [], [], []
            for _ in range(args.rounds):
                started = time.perf_counter()
                for sample in samples:
                    sample.to_line()
                encode_times.append(time.perf_counter() - started)
                curl_times.append(bench_curl(server, samples, args.batch_size, work))
                delivery_times.append(bench_delivery(server, samples, args.batch_size, work))
        finally:
            server.stop()
    curl_rate = args.points / min(curl_times)
    delivery_rate = args.points / min(delivery_times)
    print(f"points: {args.points}, batch size: {args.batch_size}, rounds: {args.rounds} (best)")
    print(f"curl --data-binary:      {curl_rate:>10,.0f} points/s")
    print(f"Delivery (spool+writer): {delivery_rate:>10,.0f} points/s")
    print(f"ratio delivery/curl:     {delivery_rate / curl_rate:>10.2f}x (target >= 0.90x)")
    print(f"  of which encoding alone (Sample.to_line): {min(encode_times):.2f} s for all points")


if __name__ == "__main__":
    main()

"""Capacity: how many SNMP devices one real daemon polls at a 10 s interval on this machine.

    python bench/capacity.py [--sizes 1000,2000,5000,10000] [--warmup 20] [--window 60]
                             [--responders 2] [--interval 10] [--concurrency C]
                             [--workers W] [--snmp 2c|3] [--profile N] [--quick]

The daemon is the real one, `qkdtel run [--workers W]` in a child process, with its SQLite
spool(s) and a real InfluxDB sink (Debian's influxd 1.6 started here, as the tests do). The
devices are cheap replaying agents (`_common/replay_agents.py`: answers recorded from the
MadQCI twin through the real driver, replayed by request-id from `--responders` processes of
their own), so the agents do not starve the collector; their CPU is reported apart. With
`--snmp 3` the devices are SNMPv3 authPriv (SHA-256 + AES-128), each with an engine ID of its
own (`_common/replay_v3.py`: the responders check and seal every message as an agent does).

For each size N, `--warmup` seconds after the daemon (every worker) has started collecting
(loading the file is not warm-up: 15-40 s at 10,000 devices), over `--window` seconds:

- polls due (N x window / interval) and done (`qkdtel_device_status` points in InfluxDB);
- late: the share of polls started more than 1 s after the previous one + the interval, a poll
  never made counting as late (from the status points' times, per device);
- collector CPU (share of one core; with workers, all processes together and the busiest one),
  its peak RSS (workers: summed), influxd's and the responders' CPU, and what every other
  process of the machine took meanwhile (`others`, from /proc/stat) with the load average at
  the window's end: other work on a shared machine shows beside each figure;
- spool commits/s: fsync + fdatasync system calls of the daemon (`perf stat` tracepoints);
- points/s reaching InfluxDB: `points_written` of the daemon's own `qkdtel_collector`;
- at N <= 1,000, end-to-end latency: a probe reads the status points back every 0.5 s and keeps
  when each was first readable; the share readable within 2 s of its poll, and the 99th
  percentile.

Then the largest N held with at most 1 % of polls late. `--profile N` runs the daemon at size N
under cProfile and prints own time by package and the top functions: what bounds it.
`--quick`: N = 200, 10 s warm-up, 20 s window, a smoke run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from _common.cpu_profile import own_time_by_package
from _common.procs import CLOCK_TICK, process_cpu
from _common.replay_agents import Responders, assign, device_entry, record

from qkdtel.sims.influxd import InfluxServer, temporary_influxd

LATE_S = 1.0
LATENCY_PROBE_MAX_N = 1000


@dataclass
class Result:
    """What one size gave."""

    n: int
    workers: int
    due: int
    done: int
    late: int
    errors: int
    cpu: float  # share of one core, every process of the daemon together
    busiest: float  # share of one core of its busiest process
    rss_mb: float
    influxd_cpu: float
    agents_cpu: float
    others_cpu: float  # every other process of the machine, shares of one core summed
    load: float  # 1-minute load average at the window's end
    commits_s: float | None
    points_s: float
    latency: list[float]

    @property
    def late_share(self) -> float:
        return self.late / self.due if self.due else 1.0


def _config(work: Path, n: int, ports: list[int], modules: dict[str, Any], args, db: str,
            influx: InfluxServer) -> Path:  # fmt: skip
    """The daemon's file: N devices over the responders, one InfluxDB sink."""
    names = sorted(modules)
    devices = []
    for name, module, port in assign(n, names, ports):
        entry = device_entry(name, modules[module], port, args.snmp)
        devices.append(dict(entry, interval=args.interval, timeout=5))
    document = {
        "collector": {
            "spool_dir": str(work / f"n{n}" / "spool"),
            **({"concurrency": args.concurrency} if args.concurrency else {}),
        },
        "sinks": [{"type": "influxdb_v1", "url": influx.url, "database": db}],
        "devices": devices,
    }
    path = work / f"n{n}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (the workers of `qkdtel run --workers`)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _machine_busy_s() -> float:
    """CPU seconds every processor of the machine spent busy so far (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / CLOCK_TICK


def _wait_collecting(daemon: subprocess.Popen[bytes], log: Path, workers: int) -> None:
    """Until every collector process has logged that it is collecting: loading a file of
    10,000 devices takes 15-40 s on a busy machine, and the warm-up starts after it."""
    while log.read_text().count("collecting from") < workers:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited before collecting; see {log}")
        time.sleep(0.5)


def _rss_mb(pid: int) -> float:
    """Resident set size of a process now, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _count_syncs(pids: list[int], seconds: float) -> subprocess.Popen[str] | None:
    """`perf stat` counting the daemon's fsync/fdatasync calls for `seconds` (None: no perf)."""
    events = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"
    targets = ",".join(map(str, pids))
    try:
        return subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", events, "-p", targets, "--", "sleep", f"{seconds}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    except FileNotFoundError:
        return None


def _syncs(perf: subprocess.Popen[str] | None) -> int | None:
    """The count `_count_syncs` printed, or None where perf could not count."""
    if perf is None:
        return None
    _, err = perf.communicate()
    counts = [line.split(",")[0] for line in err.splitlines() if "sys_enter_f" in line]
    return sum(int(c) for c in counts) if counts and all(c.isdigit() for c in counts) else None


class LatencyProbe(threading.Thread):
    """Reads the status points back every 0.5 s; keeps when each one was first readable."""

    def __init__(self, influx: InfluxServer, db: str):
        super().__init__(daemon=True)
        self.influx, self.db = influx, db
        self.first_seen: dict[tuple[str, int], float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            q = 'SELECT "up" FROM "qkdtel_device_status" WHERE time > now() - 15s GROUP BY "device"'
            now = time.time()
            for row in self.influx.query(q, self.db):
                self.first_seen.setdefault((row["device"], row["time"]), now)

    def delays(self, start: float, end: float) -> list[float]:
        """Seconds from each point's time to its first reading, for points timed in the span."""
        return [
            seen - t / 1e9 for (_, t), seen in self.first_seen.items() if start <= t / 1e9 < end
        ]


def _polls(
    influx: InfluxServer, db: str, start: float, end: float, interval: float
) -> tuple[int, int, int]:
    """(done, late, errors) from the status points: polls in [start, end), those that came more
    than LATE_S after the device's previous one + interval, and failed polls."""
    since = int(start - interval - 2 * LATE_S)
    q = (
        f'SELECT "up" FROM "qkdtel_device_status" WHERE time >= {since}s'
        f' AND time < {int(end) + 1}s GROUP BY "device"'
    )
    times: dict[str, list[float]] = {}
    errors = 0
    for row in influx.query(q, db):
        times.setdefault(row["device"], []).append(row["time"] / 1e9)
        errors += not row["up"] and start <= row["time"] / 1e9 < end
    done = late = 0
    for polls in times.values():
        polls.sort()
        for previous, t in itertools.pairwise(polls):
            if start <= t < end:
                done += 1
                late += t - previous > interval + LATE_S
    return done, late, errors


def _points_per_s(influx: InfluxServer, db: str, start: float, end: float) -> float:
    """Points the daemon's sink acknowledged per second, from its own qkdtel_collector (one
    series per worker, summed)."""
    q = (
        f'SELECT "points_written" FROM "qkdtel_collector" WHERE time >= {int(start)}s'
        f' AND time <= {int(end) + 1}s GROUP BY "shard"'
    )
    series: dict[str, list[dict[str, Any]]] = {}
    for row in influx.query(q, db):
        series.setdefault(row.get("shard", ""), []).append(row)
    rate = 0.0
    for rows in series.values():
        if len(rows) >= 2:
            first, last = rows[0], rows[-1]
            seconds = (last["time"] - first["time"]) / 1e9
            rate += (last["points_written"] - first["points_written"]) / seconds
    return rate


def run_size(n: int, args, work: Path, influx: InfluxServer, responders: Responders,
             modules: dict[str, Any], profile: bool = False) -> Result:  # fmt: skip
    """Run the daemon at N devices through warm-up and window; measure."""
    db = f"cap_{n}"
    influx.create_database(db)
    config = _config(work, n, responders.ports, modules, args, db, influx)
    prof = work / f"n{n}.prof"
    python = [sys.executable, *(["-m", "cProfile", "-o", str(prof)] if profile else [])]
    log = (work / f"n{n}.log").open("w")
    workers = ["--workers", str(args.workers)] if args.workers > 1 else []
    run = ["run", "-c", str(config), *workers]
    daemon = subprocess.Popen([*python, "-m", "qkdtel.cli", *run],
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    probe = LatencyProbe(influx, db) if n <= LATENCY_PROBE_MAX_N and not profile else None
    try:
        _wait_collecting(daemon, Path(log.name), args.workers)
        time.sleep(args.warmup)
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited at N={n}; see {log.name}")
        if probe:
            probe.start()
        pids = [daemon.pid, *_children(daemon.pid)]
        start, cpu0 = time.time(), [process_cpu(pid) for pid in pids]
        influx_cpu0, agents_cpu0 = process_cpu(influx._process.pid), responders.cpu()
        machine0 = _machine_busy_s()
        perf = _count_syncs(pids, args.window)
        rss = 0.0
        while time.time() < start + args.window:
            rss = max(rss, sum(_rss_mb(pid) for pid in pids))
            time.sleep(1)
        end = time.time()
        spent = [process_cpu(pid) - before for pid, before in zip(pids, cpu0, strict=True)]
        cpu, busiest = sum(spent) / (end - start), max(spent) / (end - start)
        influx_cpu = (process_cpu(influx._process.pid) - influx_cpu0) / (end - start)
        agents_cpu = (responders.cpu() - agents_cpu0) / (end - start)
        machine = (_machine_busy_s() - machine0) / (end - start)
        others = max(0.0, machine - cpu - influx_cpu - agents_cpu)
        load = os.getloadavg()[0]
        syncs = _syncs(perf)
        time.sleep(3)  # the window's last points reach InfluxDB
    finally:
        if probe:
            probe.done.set()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        log.close()
    done, late, errors = _polls(influx, db, start, end, args.interval)
    due = round(n * (end - start) / args.interval)
    late += max(0, due - done)
    if profile:
        _print_profile(prof)
    return Result(
        n=n,
        workers=args.workers,
        due=due,
        done=done,
        late=late,
        errors=errors,
        cpu=cpu,
        busiest=busiest,
        rss_mb=rss,
        influxd_cpu=influx_cpu,
        agents_cpu=agents_cpu,
        others_cpu=others,
        load=load,
        commits_s=None if syncs is None else syncs / args.window,
        points_s=_points_per_s(influx, db, start, end),
        latency=probe.delays(start, end - 3) if probe else [],
    )


def _print_profile(path: Path) -> None:
    """Own time by package, then the 15 functions with the most own time."""
    stats = pstats.Stats(str(path))
    shares = own_time_by_package(stats)
    total = sum(shares.values()) or 1.0
    print("  profile, own time by package:")
    for label, own in sorted(shares.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {own / total:6.1%}  {label}")
    stats.sort_stats("tottime").print_stats(15)


def _row(r: Result) -> str:
    latency = ""
    if r.latency:
        within = sum(d <= 2.0 for d in r.latency) / len(r.latency)
        p99 = statistics.quantiles(r.latency, n=100)[98] if len(r.latency) > 1 else r.latency[0]
        latency = f"  readable<=2s {within:6.1%} p99 {p99:4.2f}s"
    commits = "   n/a" if r.commits_s is None else f"{r.commits_s:6.1f}"
    return (
        f"{r.n:>6} {r.workers:>2} {r.due:>6} {r.done:>6} {r.late_share:7.2%} {r.errors:>5}"
        f" {r.cpu:6.0%} {r.busiest:6.0%} {r.rss_mb:6.0f} {r.influxd_cpu:6.0%} {r.agents_cpu:6.0%}"
        f" {r.others_cpu:6.0%} {r.load:5.2f} {commits} {r.points_s:8.0f}" + latency
    )


HEADER = (
    "     N  W    due   done    late  errs    cpu busiest  rssMB influxd agents others  load"
    " commit/s points/s"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--responders", type=int, default=2)
    parser.add_argument("--concurrency", type=int, help="collector.concurrency (default: its own)")
    parser.add_argument("--workers", type=int, default=1, help="qkdtel run --workers W")
    parser.add_argument("--snmp", choices=("2c", "3"), default="2c", help="3: v3 authPriv")
    parser.add_argument("--profile", type=int, default=None, metavar="N")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.warmup, args.window = "200", 10.0, 20.0
    if args.profile and args.workers > 1:
        parser.error("--profile profiles one process: not with --workers")
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="qkdtel-capacity-"))
    print("recording the twin's answers through the real driver ...", flush=True)
    table, modules = record(work)
    print(f"  {len(table)} exchanges of {len(modules)} modules; work in {work}", flush=True)
    results = []
    with (
        temporary_influxd() as influx,
        Responders(table, args.responders, args.snmp) as responders,
    ):
        print(f"SNMPv{args.snmp}, {args.workers} worker(s); load average before: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)  # fmt: skip
        print(HEADER, flush=True)
        for n in sizes:
            results.append(run_size(n, args, work, influx, responders, modules))
            print(_row(results[-1]), flush=True)
        if args.profile:
            print(f"\nprofile at N={args.profile}:")
            print(_row(run_size(args.profile, args, work, influx, responders, modules, True)))
        if responders.missed.value:
            print(f"responders dropped {responders.missed.value} unknown request(s)")
    held = [r.n for r in results if r.late_share <= 0.01]
    print(f"\nlargest N held with <= 1 % of polls more than {LATE_S:g} s late:"
          f" {max(held) if held else 'none'}")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps([r.__dict__ | {"late_share": r.late_share} for r in results])
        )


if __name__ == "__main__":
    main()

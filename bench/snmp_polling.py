"""SNMP polling: qkdtel's qkd_snmp driver beside prometheus-snmp-exporter, same agents, same run.

    python bench/snmp_polling.py [--modules 28] [--rounds 40] [--concurrency 28]
                                 [--agent-procs N] [--no-v3] [--profile] [--snmp-yml FILE]
                                 [--quick]

Starts the simulated QKD modules (`qkdtel sims up --only ...`) in `--agent-procs` child
processes (default: one per CPU, at least 2), so their CPU is counted against neither poller,
then measures in turn:

- qkdtel: `DevicePoller` + `QkdSnmpDriver` polling the N modules, at most `--concurrency`
  polls in flight, for `--rounds` rounds (a round polls every module once), in this process,
  CPU = `time.process_time()` around the rounds only (drivers built and two warm-up rounds
  done before: sockets, v3 discovery, table size learnt);
- exporter: Debian's `prometheus-snmp-exporter` with a generated snmp.yml (one module per
  profile: `get` of the scalars the driver reads, `walk` of the link table, whose every column
  the driver reads; OIDs resolved by name through pysnmp's MibBuilder; the driver's
  max-repetitions, timeout and retries), scraped at `/snmp?target=...&module=...` for the
  same modules, concurrency and rounds; CPU = utime + stime of the exporter process
  (/proc/<pid>/stat) over the rounds. A warm-up scrape of every module is checked against the
  driver's reading (same rows, same peers) before anything is counted, and every counted
  scrape must be HTTP 200 with the table's metrics in it.

Both in SNMPv2c, then both in SNMPv3 authPriv (SHA-256 + AES-128, the simulators' user).
Prints polls, wall seconds, polls/s, CPU seconds and polls per CPU-second of each, and the
ratios qkdtel/exporter. `--profile` adds, for extra qkdtel rounds run apart from the timed
ones, the real CPU per poll by stage (receiving answers, the rest) and a cProfile (own time by
package, top functions). Not a unit test: the figures depend on the machine, and wall-clock
polls/s on the agents and whatever else runs; compare CPU. `--quick` (4 modules, 3 rounds, v2c)
only shows that it runs.

The parts live in bench/_common/ (agents, exporter, rounds, CPU profile); this script measures
and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import yaml
from _common.cpu_profile import profile_rounds
from _common.procs import CLOCK_TICK
from _common.rounds import Job, SideRun, timed_rounds
from _common.snmp_agents import Agents, choose_slots
from _common.snmp_exporter import (
    EXPORTER,
    Exporter,
    ExporterModule,
    check_scrape,
    exporter_modules,
    packets_sent,
)
from _common.udp_probes import counting_datagrams

from qkdtel.config import load_config_text
from qkdtel.poller import DevicePoller
from qkdtel.sims.snmp.agent import Credentials

VERSIONS = ("2c", "3")
MIN_EXPORTER_CPU_S = 0.5  # below this, /proc's clock ticks make the exporter's figure coarse


def poll_job(poller: DevicePoller) -> Job:
    """One poll of `poller` as a round job."""

    async def job() -> str:
        result = await poller.poll()
        return "" if result.ok else f"{result.device}: {result.error_class}: {result.error}"

    return job


def make_pollers(agents: Agents, version: str) -> list[DevicePoller]:
    """A poller per simulated module, built from a collector config as the daemon builds it."""
    document = {"devices": agents.device_entries(version)}
    loaded = load_config_text(yaml.safe_dump(document), f"<bench v{version}>")
    return [DevicePoller.create(device, max_backoff=60.0) for device in loaded.devices]


async def qkdtel_warm_up(pollers: Sequence[DevicePoller]) -> tuple[dict[str, Any], float]:
    """Two untimed rounds (engine, socket, v3 discovery, table size); the second counted.

    Returns the readings of the second round per device (for checking the exporter's) and
    the SNMP requests per poll it took.
    """
    for poller in pollers:
        result = await poller.poll()
        if not result.ok:
            raise SystemExit(f"qkdtel warm-up: {result.device}: {result.error}")
    readings: dict[str, Any] = {}
    with counting_datagrams() as sent:
        for poller in pollers:
            result = await poller.poll()
            if not result.ok:
                raise SystemExit(f"qkdtel warm-up: {result.device}: {result.error}")
            readings[result.device] = result.samples
    return readings, sent[0] / len(pollers)


def bench_qkdtel(
    runner: asyncio.Runner,
    pollers: Sequence[DevicePoller],
    agents: Agents,
    rounds: int,
    concurrency: int,
    version: str,
) -> tuple[SideRun, dict[str, Any]]:
    """The qkdtel side's timed rounds, and the warm-up readings to check the exporter's by."""
    run = SideRun("qkdtel", version)

    async def measure() -> dict[str, Any]:
        readings, run.requests_per_poll = await qkdtel_warm_up(pollers)
        jobs = [poll_job(p) for p in pollers]
        await timed_rounds(run, jobs, rounds, concurrency, agents, time.process_time)
        return readings

    readings = runner.run(measure())
    return run, readings


async def close_pollers(pollers: Sequence[DevicePoller]) -> None:
    """Close every poller's driver (sockets)."""
    for poller in pollers:
        await poller.aclose()


def bench_exporter(
    exporter: Exporter,
    modules: dict[str, ExporterModule],
    agents: Agents,
    readings: dict[str, Any],
    rounds: int,
    concurrency: int,
    version: str,
) -> SideRun:
    """The exporter side's timed rounds: scrapes over `concurrency` kept-alive connections,
    after one checked, untimed scrape of every module."""
    run = SideRun("exporter", version)
    targets = []
    for slot in agents.slots:
        module = modules[slot.profile]
        query = urlencode({"target": agents.address(slot.device), "module": module.name})
        targets.append((slot.device, module, f"/snmp?{query}"))

    async def measure(client: httpx.AsyncClient) -> None:
        packets = 0.0
        for device, module, path in targets:  # warm-up and check, untimed
            response = await client.get(path)
            if response.status_code != 200:
                raise SystemExit(
                    f"exporter, {device}: HTTP {response.status_code}: {response.content[:500]!r}"
                )
            check_scrape(device, module, response.content, readings[device])
            packets += packets_sent(response.content)
        run.requests_per_poll = packets / len(targets)

        def job(device: str, module: ExporterModule, path: str) -> Job:
            marker = f"\n{module.first_column}{{".encode()

            async def scrape() -> str:
                response = await client.get(path)
                if response.status_code != 200 or marker not in response.content:
                    return f"{device}: HTTP {response.status_code}: {response.content[:200]!r}"
                return ""

            return scrape

        jobs = [job(*target) for target in targets]
        await timed_rounds(run, jobs, rounds, concurrency, agents, exporter.cpu)

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        base = f"http://127.0.0.1:{exporter.port}"
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
            await measure(client)

    asyncio.run(main())
    return run


# ---- report ------------------------------------------------------------------------------------


HEADER = (
    f"{'side':<14} {'polls':>6} {'failed':>6} {'wall s':>7} {'polls/s':>8} "
    f"{'CPU s':>7} {'polls/CPU-s':>11} {'req/poll':>8} {'agent max':>9}"
)


def report(runs: Sequence[SideRun]) -> str:
    lines = [HEADER]
    for run in runs:
        requests = "" if run.requests_per_poll is None else f"{run.requests_per_poll:.1f}"
        lines.append(
            f"{run.side + ' v' + run.version:<14} {run.polls:>6} {len(run.failures):>6} "
            f"{run.wall_s:>7.2f} {run.per_s:>8.0f} {run.cpu_s:>7.2f} {run.per_cpu_s:>11.0f} "
            f"{requests:>8} {run.agents_busy:>9.0%}"
        )
    by_key = {(r.side, r.version): r for r in runs}
    for version in VERSIONS:
        ours, theirs = by_key.get(("qkdtel", version)), by_key.get(("exporter", version))
        if ours and theirs:
            lines.append(
                f"ratio qkdtel/exporter v{version}: polls/s {ours.per_s / theirs.per_s:.2f}x, "
                f"polls per CPU-s {ours.per_cpu_s / theirs.per_cpu_s:.2f}x (target 1.00x)"
            )
    coarse = [r for r in runs if r.side == "exporter" and r.cpu_s < MIN_EXPORTER_CPU_S]
    if coarse:
        lines.append(
            f"warning: the exporter's CPU comes in {1000 / CLOCK_TICK:g} ms clock ticks and it"
            f" used under {MIN_EXPORTER_CPU_S:g} s: its polls per CPU-s are coarse; raise --rounds"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modules", type=int, default=28, help="modules polled (28: the twin)")
    parser.add_argument("--rounds", type=int, default=40, help="timed polls of every module")
    parser.add_argument("--concurrency", type=int, default=28, help="polls in flight at most")
    parser.add_argument(
        "--agent-procs",
        type=int,
        default=max(2, os.cpu_count() or 2),
        help="child processes serving the simulated agents",
    )
    parser.add_argument("--no-v3", action="store_true", help="SNMPv2c only")
    parser.add_argument("--profile", action="store_true", help="cProfile the qkdtel side too")
    parser.add_argument("--exporter", default=EXPORTER, help="prometheus-snmp-exporter binary")
    parser.add_argument("--snmp-yml", type=Path, help="also save the generated snmp.yml here")
    parser.add_argument(
        "--quick", action="store_true", help="4 modules, 3 rounds, v2c: only shows that it runs"
    )
    args = parser.parse_args()
    if args.quick:
        args.modules, args.rounds, args.concurrency, args.no_v3 = 4, 3, 4, True
    if shutil.which(args.exporter) is None:
        raise SystemExit(f"{args.exporter} not found (apt-get install prometheus-snmp-exporter)")

    versions = VERSIONS[:1] if args.no_v3 else VERSIONS
    slots = choose_slots(args.modules)
    runs: list[SideRun] = []
    profiles: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="qkdtel-bench-snmp-") as tmp:
        work = Path(tmp)
        with Agents(slots, args.agent_procs, work) as agents:
            first = next(iter(agents.entries.values()))
            credentials = Credentials(community=first["snmp"]["community"])
            modules = {v: exporter_modules(v, credentials) for v in versions}
            all_modules = [m for by_profile in modules.values() for m in by_profile.values()]
            with Exporter(args.exporter, all_modules, work) as exporter:
                if args.snmp_yml:
                    shutil.copyfile(exporter.config_path, args.snmp_yml)
                families = defaultdict(int)
                for slot in slots:
                    families[slot.profile] += 1
                print(
                    f"{len(slots)} modules ({', '.join(f'{n} {p}' for p, n in families.items())})"
                    f" in {len(agents.groups)} agent processes; {args.rounds} rounds, "
                    f"concurrency {args.concurrency}; exporter pid {exporter.pid}",
                    flush=True,
                )
                print(HEADER, flush=True)
                for version in versions:
                    pollers = make_pollers(agents, version)
                    runner = asyncio.Runner()
                    try:
                        run, readings = bench_qkdtel(
                            runner, pollers, agents, args.rounds, args.concurrency, version
                        )
                        runs.append(run)
                        print(report([run]).splitlines()[1], flush=True)
                        runs.append(
                            bench_exporter(
                                exporter,
                                modules[version],
                                agents,
                                readings,
                                args.rounds,
                                args.concurrency,
                                version,
                            )
                        )
                        print(report(runs[-1:]).splitlines()[1], flush=True)
                        if args.profile:
                            jobs = [poll_job(p) for p in pollers]
                            text = profile_rounds(runner, jobs, args.rounds, args.concurrency)
                            profiles.append((version, text))
                    finally:
                        runner.run(close_pollers(pollers))
                        runner.close()
    print()
    print(report(runs))
    print(
        "req/poll: SNMP requests per poll (qkdtel: UDP datagrams it sent in its warm-up round;"
        " exporter: its snmp_scrape_packets_sent); agent max: CPU busy of the busiest agent process"
    )
    for run in runs:
        for failure in run.failures[:5]:
            print(f"  {run.side} v{run.version} failed: {failure}")
    for version, text in profiles:
        print(f"\n==== cProfile, qkdtel v{version} ====\n{text}")
    if any(run.failures for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()

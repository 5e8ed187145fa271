"""`qkdtel demo`: the simulated MadQCI network feeding the store, end to end.

Starts the whole MadQCI twin (`sims up`, every family, in a child process: QKD modules,
switches, key managers, QRNG, encryptors, optical instruments), a throwaway InfluxDB 1.x server,
and the daemon with the live per-link table. Half-way through it injects one fault through the
twin's control API (by default a 3 dB bend on link 4: the key rates of the link drop, the OTDR
sees a new event, the OSA's carriers fall). When time is up it asks InfluxDB what arrived, sets
each channel's measured mean secret key rate and QBER beside the published figures, and writes
the report (`qkdtel.sims.report`: figures per link, a spectrum, an OTDR trace, key stock per
node) under the workdir, printing its path. Everything it writes (the collector
configuration, the spool, the local line-protocol store, the report) stays under `--workdir`,
the InfluxDB data included (its server is stopped, not deleted), and the agents listen on ports
chosen to be started again: the commands printed at the end run it all again.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from qkdtel.config import LoadedConfig, load_config_text
from qkdtel.daemon import Collector, ListenerStartError
from qkdtel.lab import BaselineStore
from qkdtel.live import LiveLinkTable, run_with_live_table
from qkdtel.output import print_unsqueezed
from qkdtel.sims.influxd import InfluxServer
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.report import (
    InjectedFault,
    ReportRequest,
    instruments,
    write_faults,
    write_report,
)
from qkdtel.sims.topology import load_topology
from qkdtel.sims.twin.control import BadRequest, request

DATABASE = "qkd"
OTDR_EVERY_S = 10.0
"""An OTDR acquisition synthesises and analyses a whole trace: back to back, the twin's three
OTDRs would take the CPU the QKD modules' agents answer with. Every 10 s still shows the fault
within the demo (the report acquires once more at its end)."""


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register `demo` on the main `qkdtel` parser."""
    p = subparsers.add_parser(
        "demo", help="simulated MadQCI network -> daemon -> store, with a live table"
    )
    p.add_argument("--seconds", type=float, default=60.0, help="how long to collect")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    p.add_argument("--interval", type=float, default=5.0, help="poll interval of every module")
    p.add_argument("--workdir", type=Path, default=Path("qkdtel-data/demo"))
    p.add_argument("--no-influxdb", action="store_true", help="local line-protocol store only")
    p.add_argument(
        "--fault",
        type=_fault,
        default=Fault("4", 3.0),
        metavar="LINK:DB",
        help="fibre bend injected half-way (default 4:3: 3 dB on link 4)",
    )
    p.add_argument("--no-fault", action="store_true", help="inject nothing")
    p.add_argument("--no-report", action="store_true", help="write no report at the end")
    p.set_defaults(func=cmd_demo)


@dataclass(frozen=True)
class Fault:
    """The fault the demo injects half-way: a bend of `loss_db` mid-span on `link`."""

    link: str
    loss_db: float


def _fault(text: str) -> Fault:
    link, sep, loss = text.partition(":")
    try:
        loss_db = float(loss)
    except ValueError:
        loss_db = 0.0
    if not sep or not link or not loss_db > 0:
        raise argparse.ArgumentTypeError(f"expected LINK:DB (e.g. 4:3), got {text!r}")
    links = [link.id for link in load_topology(None).links]
    if link not in links:
        raise argparse.ArgumentTypeError(f"no link {link!r} in the twin: {', '.join(links)}")
    return Fault(link, loss_db)


def collector_document(
    sims_config: dict[str, Any], workdir: Path, influx: InfluxServer | None, interval: float
) -> dict[str, Any]:
    """The generated sims config plus the demo's sinks, spool and poll interval (see
    `demo_device`)."""
    sinks: list[dict[str, Any]] = [
        {"type": "file", "name": "local", "path": str(workdir / "lineprotocol")}
    ]
    if influx is not None:
        sinks.insert(0, {"type": "influxdb_v1", "url": influx.url, "database": DATABASE})
    devices = [demo_device(d, interval) for d in sims_config["devices"]]
    passed = {k: sims_config[k] for k in ("traps", "listeners") if k in sims_config}
    return {
        "collector": {"spool_dir": str(workdir / "spool"), "self_telemetry_interval": 5},
        "sinks": sinks,
        **passed,
        "devices": devices,
    }


def demo_device(entry: dict[str, Any], interval: float) -> dict[str, Any]:
    """A generated device entry polled every `interval` (OTDRs at least every
    `OTDR_EVERY_S`)."""
    every = max(interval, OTDR_EVERY_S) if entry["driver"] == "otdr" else interval
    return {**entry, "interval": every}


def published_rates() -> dict[tuple[str, str, str, str], tuple[float, float | None]]:
    """(link, module, channel, direction) -> (published SKR in bit/s, published QBER as a
    fraction); direction `tx` at Alice's end, `rx` at Bob's (a CV module of a two-way link is
    both, on the same ITU channel, with different published rates)."""
    out = {}
    for channel in load_topology(None).channels:
        qber = channel.qber_percent / 100 if channel.qber_percent else None
        itu = str(channel.itu) if channel.itu and channel.band == "C" else ""
        for module, direction in ((channel.alice, "tx"), (channel.bob, "rx")):
            out[(channel.link, module, itu, direction)] = (channel.skr_kbps * 1000, qber)
    return out


def _published_for(
    published: dict[tuple[str, str, str, str], tuple[float, float | None]], row: dict[str, Any]
) -> tuple[float | None, float | None]:
    """The published figures of a row; a module that names no ITU channel (the AIT ones) has
    those of its link's one channel at its end, if there is only one."""
    key = (row["link"], row["device"], row["channel"], row["direction"])
    if key in published:
        return published[key]
    same_end = [v for k, v in published.items() if (k[0], k[1], k[3]) == (key[0], key[1], key[3])]
    return same_end[0] if len(same_end) == 1 else (None, None)


def summary_table(influx: InfluxServer) -> Table:
    """Per link, module and direction: points stored, mean SKR and QBER, beside the published
    means."""
    rows = influx.query(
        "SELECT count(secret_key_rate_bps) AS n, mean(secret_key_rate_bps) AS skr, "
        'mean(qber) AS qber FROM qkd_link GROUP BY "link", "device", "channel", "direction"',
        DATABASE,
    )
    published = published_rates()
    table = Table(title="What arrived in InfluxDB (means over the demo)", header_style="bold")
    for column in (
        "link",
        "module",
        "ch",
        "dir",
        "points",
        "SKR measured",
        "SKR published",
        "QBER measured",
        "QBER published",
    ):
        table.add_column(column, justify="left" if column in {"link", "module"} else "right")
    for row in sorted(rows, key=lambda r: (len(r["link"]), r["link"], r["device"])):
        skr_pub, qber_pub = _published_for(published, row)
        table.add_row(
            row["link"],
            row["device"],
            row["channel"],
            row["direction"],
            str(row["n"]),
            f"{row['skr'] / 1000:.2f} kbit/s" if row["skr"] is not None else "-",
            f"{skr_pub / 1000:.2f} kbit/s" if skr_pub else "-",
            f"{row['qber'] * 100:.2f} %" if row["qber"] is not None else "-",
            f"{qber_pub * 100:.2f} %" if qber_pub else "-",
        )
    return table


def cmd_demo(args: argparse.Namespace) -> int:
    console = Console()
    workdir: Path = args.workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    report = None
    with ExitStack() as stack:
        influx = _start_influxd(workdir, console) if not args.no_influxdb else None
        if influx is not None:
            stack.callback(influx.stop)
        sims_args = _sims_args(args.speed)
        sims = stack.enter_context(SimsProcess(workdir / "sims.yaml", sims_args))
        console.print(
            f"The MadQCI twin: {len(sims.devices)} simulated devices on 127.0.0.1, "
            f"simulated time x{args.speed:g}"
        )
        document = collector_document(sims.config, workdir, influx, args.interval)
        config_path = workdir / "qkdtel.yaml"
        config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        loaded = load_config_text(config_path.read_text(encoding="utf-8"), str(config_path))

        view = LiveLinkTable()
        collector = Collector(loaded, observers=[view])
        injected: list[InjectedFault] = []
        fault = None if args.no_fault else args.fault

        def inject() -> None:
            assert fault is not None
            # after the OTDR's commissioning baseline: the bend is then a new event on it
            wait_for_file(otdr_baseline(loaded, fault.link), time.monotonic() + args.seconds / 3)
            done = inject_fault(sims.config_path, fault, console)
            injected.extend([done] if done else [])

        start_ns = time.time_ns()
        try:
            asyncio.run(_collect(collector, view, console, args.seconds, inject if fault else None))
        except ListenerStartError as exc:  # a port taken between choosing and binding it
            console.print(f"cannot start: {exc}", markup=False, highlight=False)
            return 2
        end_ns = time.time_ns()
        if influx is not None:
            print_unsqueezed(console, summary_table(influx))
            total = sum(
                r["count"]
                for r in influx.query("SELECT count(up) FROM qkdtel_device_status", DATABASE)
            )
            console.print(f"{total} device polls recorded in InfluxDB.")
        if influx is not None and not args.no_report:
            # while the twin still runs: the report sweeps its OSA and acquires with its OTDR
            window = ReportWindow(start_ns, end_ns, injected, fault.link if fault else None)
            report = _report(workdir, influx, loaded, window, args.speed)
        files = sorted((workdir / "lineprotocol").glob("*"))
        lines = sum(_points_in(f) for f in files if f.is_file())
        console.print(
            f"Local line-protocol store: {lines} points in {workdir / 'lineprotocol'}",
            markup=False,
            soft_wrap=True,
        )
    # soft_wrap: paths and commands are never broken across lines (they must paste as printed)
    if report is not None:
        console.print(f"Report: {report}", markup=False, soft_wrap=True)
    console.print(
        _afterwards(workdir, influx, sims_args, config_path, report), markup=False, soft_wrap=True
    )
    return 0


def _start_influxd(workdir: Path, console: Console) -> InfluxServer | None:
    """The demo's InfluxDB with its database, or None (said why) when influxd is missing."""
    if shutil.which("influxd") is None:
        console.print("[yellow]influxd not found: using the local store only (no report)[/]")
        return None
    influx = _kept_influxd(workdir / "influxdb")
    influx.create_database(DATABASE)
    console.print(f"InfluxDB 1.x on {influx.url}, database {DATABASE!r}")
    return influx


def _sims_args(speed: float) -> list[str]:
    """`sims up` arguments: one block of free UDP ports, the agents' then the trap receiver's
    (a port picked apart could fall inside the agents' block)."""
    agents = len(load_topology(None).modules)
    base = free_udp_ports(agents + 1)
    return [
        *("--speed", f"{speed:g}", "--trap-target", f"127.0.0.1:{base + agents}"),
        *("--base-port", str(base)),
    ]


async def _collect(
    collector: Collector,
    view: LiveLinkTable,
    console: Console,
    seconds: float,
    inject: Callable[[], None] | None,
) -> None:
    """Run the daemon with the live table for `seconds`, calling `inject` half-way (in a
    thread: it asks the twin's control API over HTTP)."""

    async def half_way() -> None:
        await asyncio.sleep(seconds / 2)
        if inject is not None:
            await asyncio.to_thread(inject)

    task = asyncio.create_task(half_way())
    try:
        await run_with_live_table(collector, view, console, seconds)
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def otdr_baseline(loaded: LoadedConfig, link: str) -> Path | None:
    """The file the collector saves `link`'s OTDR commissioning baseline in (None: no OTDR on
    the link keeps one)."""
    _, otdr = instruments(loaded, link)
    if otdr is None or otdr.options.link != link or otdr.options.baseline_dir is None:
        return None
    return BaselineStore(otdr.options.baseline_dir).path(link, otdr.options.wavelengths_nm[0])


def wait_for_file(path: Path | None, deadline: float) -> bool:
    """Wait until `path` exists or `time.monotonic()` passes `deadline`; whether it exists
    (True for no path: nothing to wait for)."""
    while path is not None and not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def inject_fault(sims_config: Path, fault: Fault, console: Console) -> InjectedFault | None:
    """Bend `fault.link`'s fibre mid-span through the twin's control API (the operator's way
    in); None, said on the console, when the twin refuses."""
    body = {"link": fault.link, "loss_db": fault.loss_db, "kind": "bend"}
    try:
        done = request(str(sims_config), "/faults", body)
    except BadRequest as exc:
        console.print(f"fault not injected: {exc}", markup=False, highlight=False)
        return None
    what = (
        f"{done['loss_db']:g} dB {done['kind']} on link {done['link']}, "
        f"{done['distance_km']:.1f} km from its first end"
    )
    console.print(f"Injected: {what}", markup=False, highlight=False)
    return InjectedFault(time.time_ns(), what)


@dataclass(frozen=True)
class ReportWindow:
    """What the demo ran: from when to when, the faults it injected, the link it bent."""

    start_ns: int
    end_ns: int
    faults: list[InjectedFault]
    link: str | None


def _report(
    workdir: Path, influx: InfluxServer, loaded: LoadedConfig, window: ReportWindow, speed: float
) -> Path:
    """The report of the run under `workdir/report` (the instruments of the bent link, when it
    has them), and the faults beside it in `faults.json` for `qkdtel report --faults`."""
    osa, otdr = instruments(loaded, window.link)
    write_faults(workdir / "faults.json", window.faults)
    request = ReportRequest(
        query=lambda q: influx.query(q, DATABASE),
        start_ns=window.start_ns,
        end_ns=window.end_ns,
        out_dir=workdir / "report",
        osa=osa,
        otdr=otdr,
        faults=window.faults,
        note=(
            f"The twin ran at x{speed:g}: each minute of the figures is {speed:g} simulated "
            "minutes of the network (temperature swings, maintenance windows)."
        ),
    )
    return write_report(request)


def _kept_influxd(root: Path) -> InfluxServer:
    """An InfluxDB 1.x server whose data stays in `root` after the demo (started again with
    `influxd -config <root>/influxd.conf`, on the same port)."""
    root.mkdir(parents=True)
    server = InfluxServer(root)
    server.start()
    return server


def free_udp_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive UDP ports free now on `host` (for `sims up
    --base-port`, so that the agents can be started again on the ports the config names)."""
    for _ in range(100):
        base = random.randrange(20000, 60000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError(f"no {count} consecutive free UDP ports on {host}")


def _afterwards(
    workdir: Path,
    influx: InfluxServer | None,
    sims_args: list[str],
    config_path: Path,
    report: Path | None,
) -> str:
    """Where the collected data stays, and the commands that run the same again."""
    lines = [f"What was collected stays in {workdir}:"]
    if influx is not None:
        lines.append(
            f"  InfluxDB data: {influx.root}; to look: influxd -config {influx.config} & "
            f"then influx -port {influx.port} -database {DATABASE}"
        )
    if report is not None:
        lines.append(
            f"  report: {report}; again (influxd running): qkdtel report -c {config_path} "
            f"--since 1d --faults {workdir / 'faults.json'} --no-instruments --out DIR"
        )
    lines += [
        f"  spool: {workdir / 'spool'}, line protocol: {workdir / 'lineprotocol'}",
        "Run it again (each in its own terminal, or with & in one):",
    ]
    if influx is not None:
        lines.append(f"  influxd -config {influx.config}")
    lines += [
        f"  qkdtel sims up {' '.join(sims_args)}",
        f"  qkdtel run -c {config_path} --live",
        "  (the QKD modules' agents come back on the ports the config names; the twin's other "
        "devices take new ones: `qkdtel sims up ... --config-out FILE` writes a config for all)",
    ]
    return "\n".join(lines)


def _points_in(path: Path) -> int:
    """Points in a local-store file: its lines, less the `# ...` header `influx -import` reads."""
    text = path.read_text(encoding="utf-8")
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

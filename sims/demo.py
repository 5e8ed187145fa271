"""`qkdtel demo`: the simulated MadQCI network feeding the store, end to end.

Starts the MadQCI twin (`sims up`, in a child process), a throwaway InfluxDB 1.x server, and the
daemon with the live per-link table; when time is up it asks InfluxDB what arrived and sets
each link's measured mean secret key rate and QBER beside the published figures. Everything it
writes (the collector configuration, the spool, the local line-protocol store) stays under
`--workdir`, the InfluxDB data included (its server is stopped, not deleted), and the agents
listen on ports chosen to be started again: the commands printed at the end run it all again.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector, ListenerStartError
from qkdtel.live import LiveLinkTable, run_with_live_table
from qkdtel.output import print_unsqueezed
from qkdtel.sims.influxd import InfluxServer
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.topology import load_topology

DATABASE = "qkd"


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
    p.set_defaults(func=cmd_demo)


def collector_document(
    sims_config: dict[str, Any], workdir: Path, influx: InfluxServer | None, interval: float
) -> dict[str, Any]:
    """The generated sims config plus the demo's sinks, spool and poll interval."""
    sinks: list[dict[str, Any]] = [
        {"type": "file", "name": "local", "path": str(workdir / "lineprotocol")}
    ]
    if influx is not None:
        sinks.insert(0, {"type": "influxdb_v1", "url": influx.url, "database": DATABASE})
    devices = [{**d, "interval": interval} for d in sims_config["devices"]]
    return {
        "collector": {"spool_dir": str(workdir / "spool"), "self_telemetry_interval": 5},
        "sinks": sinks,
        **({"traps": sims_config["traps"]} if "traps" in sims_config else {}),
        "devices": devices,
    }


def published_rates() -> dict[tuple[str, str, str], tuple[float, float | None]]:
    """(link, module, channel) -> (published SKR in bit/s, published QBER as a fraction)."""
    out = {}
    for channel in load_topology(None).channels:
        qber = channel.qber_percent / 100 if channel.qber_percent else None
        itu = str(channel.itu) if channel.itu and channel.band == "C" else ""
        for module in (channel.alice, channel.bob):
            out[(channel.link, module, itu)] = (channel.skr_kbps * 1000, qber)
    return out


def summary_table(influx: InfluxServer) -> Table:
    """Per link and module: points stored, mean SKR and QBER, beside the published means."""
    rows = influx.query(
        "SELECT count(secret_key_rate_bps) AS n, mean(secret_key_rate_bps) AS skr, "
        'mean(qber) AS qber FROM qkd_link GROUP BY "link", "device", "channel"',
        DATABASE,
    )
    published = published_rates()
    table = Table(title="What arrived in InfluxDB (means over the demo)", header_style="bold")
    for column in (
        "link",
        "module",
        "ch",
        "points",
        "SKR measured",
        "SKR published",
        "QBER measured",
        "QBER published",
    ):
        table.add_column(column, justify="left" if column in {"link", "module"} else "right")
    for row in sorted(rows, key=lambda r: (len(r["link"]), r["link"], r["device"])):
        skr_pub, qber_pub = published.get(
            (row["link"], row["device"], row["channel"]), (None, None)
        )
        table.add_row(
            row["link"],
            row["device"],
            row["channel"],
            str(row["n"]),
            f"{row['skr'] / 1000:.2f} kbit/s",
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
    with ExitStack() as stack:
        influx = None
        if not args.no_influxdb:
            if shutil.which("influxd") is None:
                console.print("[yellow]influxd not found: using the local store only[/]")
            else:
                influx = _kept_influxd(workdir / "influxdb")
                stack.callback(influx.stop)
                influx.create_database(DATABASE)
                console.print(f"InfluxDB 1.x on {influx.url}, database {DATABASE!r}")
        # One block of free UDP ports: the agents', then the trap receiver's (a port picked
        # apart could fall inside the agents' block).
        agents = len(load_topology(None).modules)
        base = free_udp_ports(agents + 1)
        sims_args = [
            *("--speed", f"{args.speed:g}", "--trap-target", f"127.0.0.1:{base + agents}"),
            *("--base-port", str(base)),
        ]
        sims = stack.enter_context(SimsProcess(workdir / "sims.yaml", sims_args))
        console.print(
            f"{len(sims.devices)} simulated QKD modules (SNMP agents on 127.0.0.1), "
            f"simulated time x{args.speed:g}"
        )
        document = collector_document(sims.config, workdir, influx, args.interval)
        config_path = workdir / "qkdtel.yaml"
        config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        loaded = load_config_text(config_path.read_text(encoding="utf-8"), str(config_path))

        view = LiveLinkTable()
        collector = Collector(loaded, observers=[view])

        try:
            asyncio.run(run_with_live_table(collector, view, console, args.seconds))
        except ListenerStartError as exc:  # a port taken between choosing and binding it
            console.print(f"cannot start: {exc}", markup=False, highlight=False)
            return 2
        if influx is not None:
            print_unsqueezed(console, summary_table(influx))
            total = sum(
                r["count"]
                for r in influx.query("SELECT count(up) FROM qkdtel_device_status", DATABASE)
            )
            console.print(f"{total} device polls recorded in InfluxDB.")
        files = sorted((workdir / "lineprotocol").glob("*"))
        lines = sum(_points_in(f) for f in files if f.is_file())
        console.print(
            f"Local line-protocol store: {lines} points in {workdir / 'lineprotocol'}",
            markup=False,
            soft_wrap=True,
        )
    # soft_wrap: paths and commands are never broken across lines (they must paste as printed)
    console.print(
        _afterwards(workdir, influx, sims_args, config_path), markup=False, soft_wrap=True
    )
    return 0


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
    workdir: Path, influx: InfluxServer | None, sims_args: list[str], config_path: Path
) -> str:
    """Where the collected data stays, and the commands that run the same again."""
    lines = [f"What was collected stays in {workdir}:"]
    if influx is not None:
        lines.append(
            f"  InfluxDB data: {influx.root}; to look: influxd -config {influx.config} & "
            f"then influx -port {influx.port} -database {DATABASE}"
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
    ]
    return "\n".join(lines)


def _points_in(path: Path) -> int:
    """Points in a local-store file: its lines, less the `# ...` header `influx -import` reads."""
    text = path.read_text(encoding="utf-8")
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

"""`qkdtel sims ...`: run simulated hardware.

    qkdtel sims up [-t TOPOLOGY] [--base-port N] [--config-out FILE] [--speed X] [--seed N]
                   [--trap-target HOST:PORT] [--trap-version 2c|3] [--v3] [--only NAME ...]
                   [--unresponsive NAME ...] [--missing NAME=OBJECT[,OBJECT...] ...]

starts every QKD module of the topology (default: the bundled MadQCI twin) as an SNMP agent on
127.0.0.1, writes the collector configuration that polls them, prints what runs where, and
serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qkdtel.output import print_unsqueezed
from qkdtel.sims import collector_config
from qkdtel.sims.cli_common import EXIT_OK, EXIT_USAGE, positive
from qkdtel.sims.clock import AcceleratedClock
from qkdtel.sims.kme.cli import add_commands as keys_commands
from qkdtel.sims.netconf.cli import add_commands as switch_commands
from qkdtel.sims.osa.cli import add_commands as osa_commands
from qkdtel.sims.otdr.cli import add_commands as otdr_commands
from qkdtel.sims.serial_meter import add_commands as powermeter_commands
from qkdtel.sims.snmp.agent import Credentials, Faults
from qkdtel.sims.snmp.network import SimNetwork
from qkdtel.sims.topology import TopologyError, load_topology


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _missing(text: str) -> tuple[str, frozenset[str]]:
    name, sep, objects = text.partition("=")
    if not sep or not name or not objects:
        raise argparse.ArgumentTypeError(f"expected NAME=OBJECT[,OBJECT...], got {text!r}")
    return name, frozenset(o.strip() for o in objects.split(",") if o.strip())


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register `sims` and its subcommands on the main `qkdtel` parser."""
    sims = subparsers.add_parser("sims", help="run simulated hardware (the MadQCI twin)")
    add_sims_commands(sims.add_subparsers(dest="sims_command", required=True))


def add_sims_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `up` (and future sims commands) on `subparsers`."""
    up = subparsers.add_parser(
        "up",
        help="start the SNMP agents of a simulated network and serve until interrupted",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("-t", "--topology", help="topology YAML (default: the MadQCI twin)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument(
        "--base-port",
        type=int,
        help="first UDP port, agents numbered in file order (default: free ports)",
    )
    up.add_argument("--config-out", type=Path, help="write the matching collector config here")
    up.add_argument("--speed", type=positive, default=1.0, help="simulated seconds per real second")
    up.add_argument("--seed", type=int, default=0, help="seed of every simulated series")
    up.add_argument("--trap-target", type=_host_port, help="send SNMPv2c traps to HOST:PORT")
    up.add_argument(
        "--trap-version", choices=("2c", "3"), default="2c", help="SNMP version of the traps"
    )
    up.add_argument("--v3", action="store_true", help="the config polls with SNMPv3 authPriv")
    up.add_argument("--community", default=Credentials.community, help="SNMPv2c community")
    up.add_argument("--interval", type=positive, default=10.0, help="poll interval in the config")
    up.add_argument("--only", action="append", metavar="NAME", help="start only these modules")
    up.add_argument(
        "--unresponsive", action="append", default=[], metavar="NAME", help="agent drops requests"
    )
    up.add_argument(
        "--missing",
        action="append",
        default=[],
        type=_missing,
        metavar="NAME=OBJECT[,OBJECT]",
        help="agent lacks these MIB objects (noSuchObject)",
    )
    up.set_defaults(func=cmd_up)
    otdr_commands(subparsers)
    osa_commands(subparsers)
    powermeter_commands(subparsers)
    switch_commands(subparsers)
    keys_commands(subparsers)


def cmd_up(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        console.print(str(exc), markup=False, highlight=False)
        return EXIT_USAGE
    faults: dict[str, Faults] = {name: Faults(unresponsive=True) for name in args.unresponsive}
    for name, objects in args.missing:
        old = faults.get(name, Faults())
        faults[name] = Faults(old.unresponsive, old.missing_objects | objects)
    try:
        network = SimNetwork(
            topology,
            seed=args.seed,
            clock=AcceleratedClock(args.speed),
            credentials=Credentials(community=args.community),
            trap_target=args.trap_target,
            trap_version=args.trap_version,
            only=args.only,
            faults=faults,
            host=args.host,
            base_port=args.base_port,
        )
    except ValueError as exc:
        console.print(f"sims up: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    return asyncio.run(_serve(network, args, console))


async def _serve(network: SimNetwork, args: argparse.Namespace, console: Console) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await network.start()
    except OSError as exc:
        console.print(f"sims up: cannot listen: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    try:
        agents = network.info()
        if args.config_out:
            document = collector_config.render(
                agents,
                v3=args.v3,
                trap_target=args.trap_target,
                trap_version=args.trap_version,
                interval=args.interval,
            )
            collector_config.write(args.config_out, document)
        print_unsqueezed(Console(), _table(network))  # into a log: never folded to 80 columns
        where = f", config in {args.config_out}" if args.config_out else ""
        traps = (
            f", traps to {args.trap_target[0]}:{args.trap_target[1]}" if args.trap_target else ""
        )
        console.print(
            f"{len(agents)} agents of {network.topology.name} up at {args.speed:g}x speed{where}"
            f"{traps}; Ctrl-C to stop",
            highlight=False,
        )
        await stop.wait()
    finally:
        await network.stop()
    return EXIT_OK


def _table(network: SimNetwork) -> Table:
    table = Table(title=f"{network.topology.name}: simulated QKD modules", header_style="bold")
    for column in ("module", "profile", "site", "address", "links", "faults"):
        table.add_column(column)
    for agent in network.agents.values():
        links = ", ".join(
            f"{row.facts.link}{'→' if row.facts.role == 'alice' else '←'}{row.facts.peer}"
            for row in agent.rows
        )
        faults = []
        if agent.faults.unresponsive:
            faults.append("unresponsive")
        if agent.faults.missing_objects:
            faults.append("missing " + ",".join(sorted(agent.faults.missing_objects)))
        table.add_row(
            agent.name,
            agent.profile.name,
            agent.site,
            f"{agent.host}:{agent.port}",
            links,
            " ".join(faults),
        )
    return table

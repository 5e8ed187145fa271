"""`qkdtel sims ...`: run simulated hardware.

    qkdtel sims up [-t TOPOLOGY] [--base-port N] [--config-out FILE] [--speed X] [--seed N]
                   [--trap-target HOST:PORT] [--trap-version 2c|3] [--v3] [--only NAME ...]
                   [--unresponsive NAME ...] [--missing NAME=OBJECT[,OBJECT...] ...]
                   [--families snmp,switches,keys,optics,sdqkd]

starts the simulated network of the topology (default: the bundled MadQCI twin) on 127.0.0.1
around one physical model (sims/twin/): every QKD module as an SNMP agent, the optical switches
over NETCONF/SSH, the key managers, QRNG and encryptors, the optical instruments (--families
picks some, sdqkd adds an SD-QKD node per site; --only alone starts only those SNMP agents),
and the control API of the model. It
writes ONE collector configuration polling all of it (the control URL in FILE's .twin.json),
prints what runs where, and serves until SIGINT/SIGTERM.

    qkdtel sims fault --control URL|CONFIG --link 4 --add-loss 3 [--at-km 12.5] [--kind bend]
    qkdtel sims fault --control URL|CONFIG --clear [--link 4]
    qkdtel sims fault --control URL|CONFIG --device NAME --down|--up
    qkdtel sims fault --control URL|CONFIG --consumption SITE_A:SITE_B=BPS
    qkdtel sims fault --control URL|CONFIG --state

changes the running twin through its control API (CONFIG: the file `sims up` wrote).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from qkdtel.sims.twin.control import BadRequest, request
from qkdtel.sims.twin.model import FAULT_KINDS, TwinModel
from qkdtel.sims.twin.up import FAMILIES, TwinSims, families_wanted


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


def _families(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"families are {', '.join(FAMILIES)} (comma-separated), not {text!r}"
        )
    return names


def _demand(text: str) -> tuple[str, str, float]:
    sites, sep, bps = text.partition("=")
    a, colon, b = sites.partition(":")
    try:
        rate = float(bps)
    except ValueError:
        rate = -1.0
    if not sep or not colon or not a or not b or rate < 0:
        raise argparse.ArgumentTypeError(f"expected SITE_A:SITE_B=BPS, got {text!r}")
    return a, b, rate


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
    up.add_argument(
        "--families",
        type=_families,
        action="extend",
        metavar="F[,F...]",
        help=f"start these ({', '.join(FAMILIES)}); default: all but sdqkd, snmp with --only",
    )
    up.set_defaults(func=cmd_up)
    add_fault_command(subparsers)
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
    model = TwinModel(topology, seed=args.seed, clock=AcceleratedClock(args.speed))
    try:
        network = SimNetwork(
            topology,
            twin=model,
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
    workdir = args.config_out.with_suffix(".twin") if args.config_out else None
    sims = TwinSims(
        model,
        network,
        families=families_wanted(args.families, args.only),
        workdir=workdir,
        trap_target=args.trap_target,
        trap_version=args.trap_version,
    )
    return asyncio.run(_serve(sims, args, console))


async def _serve(sims: TwinSims, args: argparse.Namespace, console: Console) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sims.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        console.print(f"sims up: cannot start: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    try:
        devices = []
        if args.config_out:
            document = sims.document(args.config_out, v3=args.v3, interval=args.interval)
            devices = document["devices"]
            sims.write_control_file(args.config_out)
            collector_config.write(args.config_out, document)  # last: the readiness signal
        print_unsqueezed(Console(), _table(sims, devices))  # into a log: never folded
        where = f", config in {args.config_out}" if args.config_out else ""
        traps = (
            f", traps to {args.trap_target[0]}:{args.trap_target[1]}" if args.trap_target else ""
        )
        assert sims.control is not None
        console.print(
            f"{len(sims.network.info()) if 'snmp' in sims.families else 0} agents of "
            f"{sims.model.topology.name} up at {args.speed:g}x speed ({', '.join(sims.families)})"
            f"{where}{traps}; control API {sims.control.url}; Ctrl-C to stop",
            highlight=False,
        )
        await stop.wait()
    finally:
        await sims.stop()
    return EXIT_OK


def _table(sims: TwinSims, devices: list[dict]) -> Table:
    """Every device running: the QKD modules with their links, then the other families'."""
    network = sims.network
    table = Table(title=f"{network.topology.name}: simulated devices", header_style="bold")
    for column in ("device", "kind", "site", "address", "links", "faults"):
        table.add_column(column)
    agents = network.agents.values() if "snmp" in sims.families else []
    for agent in agents:
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
    for device in devices:
        if device["driver"] == "qkd_snmp":
            continue
        address = device.get("address") or device.get("url") or device["visa"]["resource"]
        port = f":{device['port']}" if "port" in device else ""
        node = device.get("tags", {}).get("node", "")
        table.add_row(device["name"], device["driver"], node, f"{address}{port}", "", "")
    return table


def add_fault_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `fault`: the client of a running twin's control API."""
    fault = subparsers.add_parser(
        "fault",
        help="change a running `sims up` twin: fibre loss, devices down, key demand",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fault.add_argument(
        "--control", required=True, help="control URL, or the config `sims up` wrote"
    )
    what = fault.add_mutually_exclusive_group(required=True)
    what.add_argument("--add-loss", type=positive, metavar="DB", help="add loss on --link")
    what.add_argument("--clear", action="store_true", help="repair --link (default: all)")
    what.add_argument("--down", action="store_true", help="--device stops answering")
    what.add_argument("--up", action="store_true", help="--device answers again")
    what.add_argument("--consumption", type=_demand, metavar="SITE_A:SITE_B=BPS", help="key demand")
    what.add_argument("--state", action="store_true", help="print the model's state (JSON)")
    fault.add_argument("--link", help="fibre link id (e.g. 4)")
    fault.add_argument("--at-km", type=float, help="where on the link (default: mid-span)")
    fault.add_argument("--kind", choices=FAULT_KINDS, default="bend", help="what the fault is")
    fault.add_argument("--device", help="device name (any family)")
    fault.set_defaults(func=cmd_fault)


def _fault_request(args: argparse.Namespace) -> tuple[str, dict | None]:
    """The control API call the arguments ask for; BadRequest when they do not fit."""
    if args.state:
        return "/state", None
    if args.add_loss is not None:
        if not args.link:
            raise BadRequest("--add-loss needs --link")
        body = {"link": args.link, "loss_db": args.add_loss, "kind": args.kind}
        return "/faults", body | ({"at_km": args.at_km} if args.at_km is not None else {})
    if args.clear:
        return "/faults/clear", {"link": args.link} if args.link else {}
    if args.down or args.up:
        if not args.device:
            raise BadRequest("--down/--up need --device")
        return "/devices", {"name": args.device, "up": bool(args.up)}
    a, b, bps = args.consumption
    return "/consumption", {"a": a, "b": b, "bps": bps}


def cmd_fault(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        path, body = _fault_request(args)
        answer = request(args.control, path, body)
    except BadRequest as exc:
        console.print(f"sims fault: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USAGE
    print(json.dumps(answer, indent=1 if args.state else None))
    return EXIT_OK

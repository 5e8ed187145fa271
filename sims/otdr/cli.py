"""`qkdtel sims otdr`: simulated OTDRs, one per topology link, served until interrupted.

    qkdtel sims otdr [-t TOPOLOGY] [--link ID ...] [--base-port N] [--speed X] [--loopback]
                     [--added-loss ID:METRES:DB ...] [--reflection ID:METRES:DB ...]
                     [--cut ID:METRES ...] [--config-out FILE]

Each OTDR listens on 127.0.0.1 (raw SCPI socket) and tests its link of the topology (default:
the MadQCI twin); `--speed 30` makes a 30 s acquisition take one second. The fault options
change a link's fibre from the start (a bend, a new connector, a break); `--config-out` writes
a collector configuration polling every OTDR.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from qkdtel.sims.cli_common import add_placement_arguments, positive, serve_instruments
from qkdtel.sims.otdr.fibre import route_for_link
from qkdtel.sims.otdr.instrument import OtdrSim
from qkdtel.sims.topology import load_topology


def _fault(text: str) -> tuple[str, list[float]]:
    link, _, rest = text.partition(":")
    try:
        numbers = [float(part) for part in rest.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID:METRES[:DB], got {text!r}") from None
    if not link or not numbers:
        raise argparse.ArgumentTypeError(f"expected ID:METRES[:DB], got {text!r}")
    return link, numbers


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `otdr` on the `qkdtel sims` subcommands."""
    p = subparsers.add_parser(
        "otdr",
        help="simulated OTDRs (SCPI over TCP), one per link, until interrupted",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_placement_arguments(p, link_help="only these links")
    p.add_argument("--speed", type=positive, default=1.0, help="acquisitions this many x faster")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--loopback", action="store_true", help="far ends looped back (trace x2)")
    p.add_argument("--added-loss", type=_fault, action="append", default=[], metavar="ID:M:DB")
    p.add_argument("--reflection", type=_fault, action="append", default=[], metavar="ID:M:DB")
    p.add_argument("--cut", type=_fault, action="append", default=[], metavar="ID:M")
    p.add_argument("--config-out", type=Path, help="write a collector config polling them")
    p.set_defaults(func=cmd_otdr)


def build(args: argparse.Namespace) -> list[OtdrSim]:
    """The simulated OTDRs the arguments ask for (ValueError naming what is wrong)."""
    topology = load_topology(args.topology)
    links = {link.id: link for link in topology.links}
    wanted = args.link or list(links)
    unknown = [i for i in wanted if i not in links]
    if unknown:
        raise ValueError(f"no link {', '.join(unknown)} in {topology.name}")
    sims = {}
    for index, link_id in enumerate(wanted):
        route = route_for_link(links[link_id], seed=args.seed, loopback=args.loopback)
        port = args.base_port + index if args.base_port else 0
        sims[link_id] = OtdrSim(route, speed=args.speed, seed=args.seed, host=args.host, port=port)
    for option, apply in (
        ("added-loss", lambda sim, n: sim.add_loss(n[0], n[1])),
        ("reflection", lambda sim, n: sim.add_reflection(n[0], n[1], 0.3)),
        ("cut", lambda sim, n: sim.cut(n[0])),
    ):
        for link_id, numbers in getattr(args, option.replace("-", "_")):
            if link_id not in sims:
                raise ValueError(f"--{option}: link {link_id} is not simulated")
            if len(numbers) != (1 if option == "cut" else 2):
                raise ValueError(f"--{option} {link_id}: wrong number of values")
            apply(sims[link_id], numbers)
    return list(sims.values())


def cmd_otdr(args: argparse.Namespace) -> int:
    return serve_instruments(
        "otdr",
        args,
        build,
        table=_table,
        device_entry=device_entry,
        status=lambda sims: f"{len(sims)} OTDRs at {args.speed:g}x speed; Ctrl-C to stop",
    )


def device_entry(sim: OtdrSim) -> dict[str, Any]:
    """A collector `devices:` entry polling `sim`."""
    return {
        "name": f"otdr-link-{sim.route.link}",
        "driver": "otdr",
        "interval": "1h",
        "timeout": "2m",
        "visa": {"resource": sim.resource},
        "link": sim.route.link,
        "range_m": round(2 * sim.route.length_m, -3),
    }


def _table(sims: Sequence[OtdrSim]) -> Table:
    table = Table(title="simulated OTDRs", header_style="bold")
    for column in ("link", "resource", "length", "loss 1550/1310 nm", "events"):
        table.add_column(column)
    for sim in sims:
        route = sim.route
        table.add_row(
            route.link,
            sim.resource,
            f"{route.length_m:.0f} m",
            f"{route.loss_db(1550):.2f} / {route.loss_db(1310):.2f} dB",
            str(len(route.events)),
        )
    return table

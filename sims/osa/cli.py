"""`qkdtel sims osa`: simulated optical spectrum analysers, one per link, until interrupted.

    qkdtel sims osa [--dialect yokogawa|anritsu] [--link 4] [--link 8] [--base-port N]
                    [--sweep-time S] [--pty] [--vxi11] [--added-loss ID:DB ...] [--stall ID ...]
                    [--truncate ID:cut|short ...] [--error ID:HEADER:CODE:MESSAGE ...]
                    [--config-out FILE]

Each analyser listens on 127.0.0.1 (raw SCPI socket; with `--pty` also on a pseudo-terminal,
a serial resource; with `--vxi11` also over VXI-11) and shows its link of the topology
(default: the MadQCI twin; the links with a published channel plan, 4 and 8; 3, invented, on
request). Fault options apply from the start: extra fibre loss, an analyser that never answers,
truncated binary trace blocks, a command that puts an error in the error queue (HEADER as the
simulator registers it, e.g. `RES` or `[:SENSe]:BANDwidth[:RESolution]`). `--config-out`
writes a collector configuration polling every analyser (`qkdtel poll -c FILE`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from qkdtel.sims.cli_common import add_placement_arguments, positive, serve_instruments
from qkdtel.sims.osa.server import DIALECTS, OsaSimulator
from qkdtel.sims.osa.spectrum import PUBLISHED_PLANS
from qkdtel.sims.topology import load_topology


def _per_link(text: str) -> tuple[str, str]:
    link, sep, rest = text.partition(":")
    if not sep or not link or not rest:
        raise argparse.ArgumentTypeError(f"expected ID:VALUE, got {text!r}")
    return link, rest


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `osa` on the `qkdtel sims` subcommands."""
    p = subparsers.add_parser(
        "osa",
        help="simulated optical spectrum analysers (SCPI), one per link, until interrupted",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dialect", choices=DIALECTS, default="yokogawa", help="command set")
    add_placement_arguments(p, link_help="links to watch (4, 8)")
    p.add_argument("--sweep-time", type=positive, default=0.5, help="seconds per sweep")
    p.add_argument("--seed", type=int, default=0, help="seed of the measurement noise")
    p.add_argument("--pty", action="store_true", help="also serve each on a pseudo-terminal")
    p.add_argument("--vxi11", action="store_true", help="also serve each over VXI-11")
    p.add_argument("--added-loss", type=_per_link, action="append", default=[], metavar="ID:DB")
    p.add_argument("--stall", action="append", default=[], metavar="ID", help="never answers")
    p.add_argument(
        "--truncate", type=_per_link, action="append", default=[], metavar="ID:cut|short"
    )
    p.add_argument(
        "--error", type=_per_link, action="append", default=[], metavar="ID:HEADER:CODE:MESSAGE"
    )
    p.add_argument("--config-out", type=Path, help="write a collector config polling them")
    p.set_defaults(func=cmd_osa)


def build(args: argparse.Namespace) -> list[OsaSimulator]:
    """The simulated analysers the arguments ask for (ValueError naming what is wrong)."""
    topology = load_topology(args.topology)
    wanted = args.link or sorted(PUBLISHED_PLANS)
    sims: dict[str, OsaSimulator] = {}
    for index, link in enumerate(wanted):
        port = args.base_port + index if args.base_port else 0
        sims[link] = OsaSimulator(
            args.dialect,
            link,
            topology=topology,
            seed=args.seed,
            sweep_time_s=args.sweep_time,
            host=args.host,
            port=port,
        )

    def target(option: str, link: str) -> OsaSimulator:
        if link not in sims:
            raise ValueError(f"--{option}: link {link} is not simulated")
        return sims[link]

    for link, value in args.added_loss:
        try:
            target("added-loss", link).faults.added_loss_db = float(value)
        except ValueError:
            raise ValueError(f"--added-loss {link}: {value!r} is not a number of dB") from None
    for link in args.stall:
        target("stall", link).faults.stall = True
    for link, mode in args.truncate:
        if mode not in ("cut", "short"):
            raise ValueError(f"--truncate {link}: use cut or short, not {mode!r}")
        target("truncate", link).faults.truncate_blocks = mode  # type: ignore[assignment]
    for link, rest in args.error:
        header, code, message = _error(rest)
        sim = target("error", link)
        entry = sim.lookup(header)
        if entry is None:
            raise ValueError(f"--error {link}: the {args.dialect} simulator has no {header!r}")
        sim.faults.errors[entry.spec] = (code, message)
    return list(sims.values())


def _error(text: str) -> tuple[str, int, str]:
    """`HEADER:CODE:MESSAGE` (the header may hold colons, the message may not)."""
    parts = text.rsplit(":", 2)
    if len(parts) == 3 and parts[0] and parts[2] and re.fullmatch(r"-\d+", parts[1]):
        return parts[0], int(parts[1]), parts[2]
    raise ValueError(f"--error: expected HEADER:CODE:MESSAGE with a SCPI code < 0, got {text!r}")


def device_entry(sim: OsaSimulator) -> dict[str, Any]:
    """A collector `devices:` entry polling `sim`."""
    entry: dict[str, Any] = {
        "name": f"osa-link-{sim.link}",
        "driver": "osa",
        "interval": "30s",
        "timeout": "60s",
        "dialect": sim.dialect,
        "visa": {"resource": sim.resource},
        "link": sim.link,
    }
    if sim.spectrum.notch_channels:
        entry["quantum_channels"] = list(sim.spectrum.notch_channels)
    return entry


def cmd_osa(args: argparse.Namespace) -> int:
    return serve_instruments(
        "osa",
        args,
        build,
        table=lambda sims: _table(sims, args),
        device_entry=device_entry,
        status=lambda sims: f"{len(sims)} OSAs, {args.sweep_time:g} s per sweep; Ctrl-C to stop",
        pty=args.pty,
        vxi11=args.vxi11,
    )


def _table(sims: Sequence[OsaSimulator], args: argparse.Namespace) -> Table:
    table = Table(title=f"simulated OSAs ({args.dialect})", header_style="bold")
    for column in ("link", "resource", "classical channels", "notch", "faults"):
        table.add_column(column)
    for sim in sims:
        resources = [sim.resource]
        resources += [sim.serial_resource] if args.pty else []
        resources += [sim.instr_resource] if args.vxi11 else []
        faults = [
            name
            for name, on in (
                (f"+{sim.faults.added_loss_db:g} dB", sim.faults.added_loss_db),
                ("stall", sim.faults.stall),
                (f"truncate {sim.faults.truncate_blocks}", sim.faults.truncate_blocks),
                (f"errors on {', '.join(sim.faults.errors)}", sim.faults.errors),
            )
            if on
        ]
        table.add_row(
            sim.link,
            "\n".join(resources),
            ", ".join(f"{c.channel} ({c.kind})" for c in sim.spectrum.carriers),
            ", ".join(map(str, sim.spectrum.notch_channels)) or "-",
            "; ".join(faults),
        )
    return table

"""What the `qkdtel sims` commands share: argument types, the options that place simulated
instruments, and serving SCPI instruments until SIGINT/SIGTERM.

    def cmd_osa(args):
        return serve_instruments(
            "osa", args, build, table=..., device_entry=..., status=..., pty=args.pty
        )
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from rich.console import Console
from rich.table import Table

from qkdtel.output import print_unsqueezed
from qkdtel.sims.scpi import ScpiServer, ServerThread
from qkdtel.sims.topology import TopologyError

EXIT_OK, EXIT_USAGE = 0, 2

S = TypeVar("S", bound=ScpiServer)


def positive(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def add_placement_arguments(p: argparse.ArgumentParser, link_help: str) -> None:
    """`-t/--topology`, `--link`, `--host`, `--base-port`: which links, where to listen."""
    p.add_argument("-t", "--topology", help="topology YAML (default: the MadQCI twin)")
    p.add_argument("--link", action="append", metavar="ID", help=link_help)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--base-port", type=int, default=0, help="first TCP port (default: free ones)")


def stop_on_signal() -> threading.Event:
    """An event that SIGINT or SIGTERM sets from now on (call from the main thread)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def serve_instruments(
    command: str,
    args: argparse.Namespace,
    build: Callable[[argparse.Namespace], Sequence[S]],
    *,
    table: Callable[[Sequence[S]], Table],
    device_entry: Callable[[S], dict[str, Any]],
    status: Callable[[Sequence[S]], str],
    pty: bool = False,
    vxi11: bool = False,
) -> int:
    """`qkdtel sims <command>`: build the simulators from `args`, serve them, print `table`
    (at its natural width into a pipe or log) and `status`, write the collector configuration (one
    `device_entry` per simulator) to `args.config_out` if given, and serve until interrupted.

    A bad argument or a simulator that cannot start is one line on stderr and EXIT_USAGE.
    """
    console = Console(stderr=True)
    try:
        sims = build(args)
    except (TopologyError, ValueError) as exc:
        console.print(f"sims {command}: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    try:
        thread = ServerThread(sims, pty=pty, vxi11=vxi11).start()
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"sims {command}: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    try:
        stop = stop_on_signal()  # before anything tells the caller the simulators are up
        print_unsqueezed(Console(), table(sims))
        config_out: Path | None = args.config_out
        if config_out:
            document = {"devices": [device_entry(sim) for sim in sims]}
            config_out.write_text(yaml.safe_dump(document, sort_keys=False))
        console.print(status(sims))
        stop.wait()
    finally:
        thread.stop()
    return EXIT_OK

"""`qkdtel sims switch`: the simulated fibre switch of one site over NETCONF/SSH.

    qkdtel sims switch [-t TOPOLOGY] [--site Quevedo] [--host 127.0.0.1] [--port N]
                       [--config-out FILE]

serves the switch (a quantum and a classical port pair per link ending at the site, see
sims/netconf/switch.py) until SIGINT/SIGTERM. With --config-out it writes a collector
configuration polling it, plus, beside it, the known_hosts file with the simulator's host key
and the simulator's password file that configuration names.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

import yaml
from rich.console import Console

from qkdtel.sims.cli_common import EXIT_OK, EXIT_USAGE, stop_on_signal
from qkdtel.sims.netconf.server import NetconfSimServer
from qkdtel.sims.netconf.switch import port_roles, site_switch
from qkdtel.sims.topology import TopologyError, load_topology

USERNAME = "admin"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `switch` on the `qkdtel sims` subcommands."""
    p = subparsers.add_parser(
        "switch",
        help="a simulated fibre cross-connect switch (NETCONF over SSH), until interrupted",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-t", "--topology", help="topology YAML (default: the MadQCI twin)")
    p.add_argument("--site", default="Quevedo", help="site whose switch to simulate")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    p.add_argument("--config-out", type=Path, help="write a collector config polling it")
    p.set_defaults(func=cmd_switch)


def write_config(server: NetconfSimServer, path: Path, password: str) -> None:
    """The collector configuration at `path`, its known_hosts and password files beside it."""
    known_hosts = path.with_suffix(".known_hosts")
    known_hosts.write_text(server.known_hosts_line())
    password_file = path.with_suffix(".password")
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    device = {
        "name": server.model.name,
        "driver": "netconf_switch",
        "interval": "10s",
        "timeout": "5s",
        "address": server.host,
        "port": server.port,
        "username": USERNAME,
        "password_file": str(password_file),
        "known_hosts": str(known_hosts),
        "ports": port_roles(server.model),
    }
    path.write_text(yaml.safe_dump({"devices": [device]}, sort_keys=False))


def cmd_switch(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        switch = site_switch(load_topology(args.topology), args.site)
    except (TopologyError, ValueError) as exc:
        console.print(f"sims switch: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    password = secrets.token_urlsafe(12)
    try:
        server = NetconfSimServer(switch, host=args.host, port=args.port, password=password)
    except OSError as exc:
        console.print(f"sims switch: {args.host}:{args.port}: {exc.strerror}", highlight=False)
        return EXIT_USAGE
    stop = stop_on_signal()  # before anything tells the caller the simulator is up
    with server:
        if args.config_out:
            write_config(server, args.config_out, password)
        pairs = ", ".join(f"{i}->{e}" for i, e in sorted(switch.running.pairs.items()))
        console.print(
            f"{switch.name}: NETCONF/SSH on {server.host}:{server.port}, "
            f"{len(switch.ports)} ports, cross-connects {pairs or 'none'}",
            highlight=False,
        )
        stop.wait()
    return EXIT_OK

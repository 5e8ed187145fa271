"""`qkdtel sims switch|sdqkd`: a site's simulated fibre switch, or its SD-QKD node, over
NETCONF/SSH.

    qkdtel sims switch [-t TOPOLOGY] [--site Quevedo] [--host 127.0.0.1] [--port N]
                       [--config-out FILE]
    qkdtel sims sdqkd  [-t TOPOLOGY] [--site Quevedo] [--host 127.0.0.1] [--port N]
                       [--config-out FILE] [--speed X] [--seed N]

serves the switch (a quantum and a classical port pair per link ending at the site, see
sims/netconf/switch.py) or the SD-QKD node (the site's QKD modules in the ETSI GS QKD 015
model, sims/netconf/sdqkd.py) until SIGINT/SIGTERM. With --config-out it writes a collector
configuration polling it, plus, beside it, the known_hosts file with the simulator's host key
and the simulator's password file that configuration names.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

import yaml
from rich.console import Console

from qkdtel.sims.cli_common import EXIT_OK, EXIT_USAGE, positive, stop_on_signal
from qkdtel.sims.clock import AcceleratedClock
from qkdtel.sims.netconf.sdqkd import NodeModel, collector_maps
from qkdtel.sims.netconf.server import NetconfSimServer
from qkdtel.sims.netconf.switch import SwitchModel, port_roles, site_switch
from qkdtel.sims.topology import Topology, TopologyError, load_topology

USERNAME = "admin"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `switch` and `sdqkd` on the `qkdtel sims` subcommands."""
    for name, what, func in (
        ("switch", "fibre cross-connect switch", cmd_switch),
        ("sdqkd", "SD-QKD node (ETSI GS QKD 015 model)", cmd_sdqkd),
    ):
        p = subparsers.add_parser(
            name,
            help=f"a simulated {what} over NETCONF/SSH, until interrupted",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("-t", "--topology", help="topology YAML (default: the MadQCI twin)")
        p.add_argument("--site", default="Quevedo", help="site to simulate")
        p.add_argument("--host", default="127.0.0.1", help="address to listen on")
        p.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
        p.add_argument("--config-out", type=Path, help="write a collector config polling it")
        if name == "sdqkd":
            p.add_argument("--speed", type=positive, default=1.0, help="simulated time speed")
            p.add_argument("--seed", type=int, default=0, help="seed of the noise")
        p.set_defaults(func=func)


def write_config(server: NetconfSimServer, path: Path, password: str, device: dict) -> None:
    """The collector configuration at `path` polling `device` (its driver's own options), its
    known_hosts and password files beside it."""
    known_hosts = path.with_suffix(".known_hosts")
    known_hosts.write_text(server.known_hosts_line())
    password_file = path.with_suffix(".password")
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    entry = {
        "name": server.model.name,
        "interval": "10s",
        "timeout": "5s",
        "address": server.host,
        "port": server.port,
        "username": USERNAME,
        "password_file": str(password_file),
        "known_hosts": str(known_hosts),
        **device,
    }
    path.write_text(yaml.safe_dump({"devices": [entry]}, sort_keys=False))


def _serve(args: argparse.Namespace, build, device, summary) -> int:
    """Build the model (`build(topology)`), serve it, write the config, wait for a signal."""
    console = Console(stderr=True)
    try:
        topology = load_topology(args.topology)
        model = build(topology)
    except (TopologyError, ValueError) as exc:
        console.print(f"sims {args.sims_command}: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    password = secrets.token_urlsafe(12)
    try:
        server = NetconfSimServer(model, host=args.host, port=args.port, password=password)
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        console.print(f"sims {args.sims_command}: {where}: {exc.strerror}", highlight=False)
        return EXIT_USAGE
    stop = stop_on_signal()  # before anything tells the caller the simulator is up
    with server:
        if args.config_out:
            write_config(server, args.config_out, password, device(topology, model))
        where = f"{server.host}:{server.port}"
        console.print(f"{model.name}: NETCONF/SSH on {where}, {summary(model)}", highlight=False)
        stop.wait()
    return EXIT_OK


def cmd_switch(args: argparse.Namespace) -> int:
    def summary(switch: SwitchModel) -> str:
        pairs = ", ".join(f"{i}->{e}" for i, e in sorted(switch.running.pairs.items()))
        return f"{len(switch.ports)} ports, cross-connects {pairs or 'none'}"

    return _serve(
        args,
        lambda topology: site_switch(topology, args.site),
        lambda topology, switch: {"driver": "netconf_switch", "ports": port_roles(switch)},
        summary,
    )


def cmd_sdqkd(args: argparse.Namespace) -> int:
    def device(topology: Topology, node: NodeModel) -> dict:
        peers, links = collector_maps(topology)
        return {"driver": "sdqkd_node", "peers": peers, "links": links}

    return _serve(
        args,
        lambda topology: NodeModel(
            topology, args.site, args.seed, AcceleratedClock(speed=args.speed)
        ),
        device,
        lambda node: f"{len(node.modules)} QKD modules, {len(node.ends)} link ends",
    )

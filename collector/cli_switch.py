"""`qkdtel switch ...`: look at and change a fibre switch's cross-connects, safely.

    qkdtel switch show -c qkdtel.yaml SWITCH
    qkdtel switch connect -c qkdtel.yaml SWITCH INGRESS EGRESS [--dry-run] [--override-classical]
                          [--local-budget-only] [--topology FILE]
    qkdtel switch move -c qkdtel.yaml SWITCH INGRESS EGRESS [--dry-run] [--override-classical]
    qkdtel switch disconnect -c qkdtel.yaml SWITCH INGRESS [EGRESS] [--dry-run] [...]
    qkdtel switch diff -c qkdtel.yaml SWITCH          # candidate against running, on the switch

SWITCH is a `netconf_switch` device of the file. Before anything is sent, a change is checked:
ports configured as classical need --override-classical, and a new quantum path whose loss
(fibre links of --topology, default the bundled MadQCI twin, plus the switch and two
multiplexer passes) exceeds its technology's budget is refused with the figure. The path is
followed end to end: across every other netconf_switch device of the file whose quantum port
is on a link of the path and which cross-connects it onward (read with `get` only), each
switch adding its insertion loss and two multiplexer passes; a switch the path reaches that
cannot be read refuses the change unless --local-budget-only (this hop only). The change is
then made under locks on the candidate, validated, committed confirmed, read back and
confirmed; a change that is not confirmed (a lost session) rolls back by itself.
Exit: 0 done, 1 the switch did not take it (the message says what it is left in), 2 refused
before sending (a guard, a meaningless change, the file).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from qkdtel.cli_common import EXIT_CONFIG, EXIT_OK, EXIT_POLL_FAILED, load_or_exit, stderr, stdout
from qkdtel.drivers.netconf_switch.control import (
    ChangeFailed,
    SwitchControl,
    diff_lines,
)
from qkdtel.drivers.netconf_switch.guards import ChangeRefused
from qkdtel.drivers.netconf_switch.model import SwitchState, parse_switch, subtree_filter
from qkdtel.drivers.netconf_switch.options import SwitchOptions
from qkdtel.sdk import PollError

DRIVER = "netconf_switch"


def _link_losses(topology: str | None) -> dict[str, float]:
    """Link id -> C-band loss (dB) of the topology file (None: the bundled MadQCI twin)."""
    # Imported here: the topology loader lives with the simulators, which `qkdtel run` must
    # never load (tests/test_layers.py); only this command needs it.
    from qkdtel.sims.topology import TopologyError, load_topology

    try:
        return {link.id: link.loss_db for link in load_topology(topology).links}
    except TopologyError as exc:
        stderr.print(escape(str(exc)), highlight=False)
        raise SystemExit(EXIT_CONFIG) from None


def _control(args: argparse.Namespace, link_loss: dict[str, float]) -> SwitchControl:
    """The `SwitchControl` of the named device, or exit 2 naming what is wrong."""
    loaded = load_or_exit(args.config)
    device = next((d for d in loaded.devices if d.config.name == args.switch), None)
    if device is None:
        stderr.print(f"{args.config}: no device named {args.switch!r}", highlight=False)
        raise SystemExit(EXIT_CONFIG)
    if device.config.driver != DRIVER or not isinstance(device.options, SwitchOptions):
        stderr.print(
            f"{args.config}: device {args.switch!r} uses driver {device.config.driver!r}, "
            f"not {DRIVER}",
            highlight=False,
        )
        raise SystemExit(EXIT_CONFIG)
    others = {
        d.config.name: d.options
        for d in loaded.devices
        if d is not device and d.config.driver == DRIVER and isinstance(d.options, SwitchOptions)
    }
    return SwitchControl(
        device.config.name, device.options, link_loss, device.config.timeout, others
    )


def _print_state(state: SwitchState) -> None:
    table = Table("ingress", "egress", "label in", "label out", "power out (dBm)")
    for ingress, egress in sorted(state.pairs.items()):
        port_in, port_out = state.ports.get(ingress), state.ports.get(egress)
        power = port_out.power_dbm if port_out and port_out.power_dbm is not None else None
        table.add_row(
            str(ingress),
            str(egress),
            port_in.label if port_in else "",
            port_out.label if port_out else "",
            "" if power is None else f"{power:.2f}",
        )
    stdout.print(table)


def cmd_show(args: argparse.Namespace) -> int:
    control = _control(args, {})
    try:
        _print_state(control.state())
    except PollError as exc:
        stderr.print(escape(str(exc)), highlight=False)
        return EXIT_POLL_FAILED
    finally:
        control.close()
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """What the switch's candidate holds that running does not (someone's pending edit)."""
    control = _control(args, {})
    try:
        configs = {}
        for source in ("running", "candidate"):
            reply = control.session.call(
                f"get-config {source}",
                lambda m, s=source: m.get_config(s, filter=subtree_filter()),
            )
            configs[source] = parse_switch(reply.data_ele, control.session.where).pairs
    except PollError as exc:
        stderr.print(escape(str(exc)), highlight=False)
        return EXIT_POLL_FAILED
    finally:
        control.close()
    lines = diff_lines(configs["running"], configs["candidate"])
    stdout.print("\n".join(lines) if lines else "candidate = running", highlight=False)
    return EXIT_OK


def cmd_change(args: argparse.Namespace) -> int:
    control = _control(args, _link_losses(args.topology))
    try:
        outcome = control.change(
            args.operation,
            args.ingress,
            args.egress,
            dry_run=args.dry_run,
            override_classical=args.override_classical,
            local_budget_only=args.local_budget_only,
        )
    except ChangeRefused as exc:
        stderr.print(f"refused: {escape(str(exc))}", highlight=False)
        return EXIT_CONFIG
    except (ChangeFailed, PollError) as exc:
        stderr.print(f"failed: {escape(str(exc))}", highlight=False)
        return EXIT_POLL_FAILED
    finally:
        control.close()
    stdout.print("\n".join(outcome.diff), highlight=False)
    if outcome.applied:
        stdout.print(f"{args.switch}: committed and confirmed", highlight=False)
    else:
        stdout.print(f"{args.switch}: dry run, nothing sent", highlight=False)
    return EXIT_OK


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    parser.add_argument("switch", help="a netconf_switch device of the file")
    return parser


def _change_parser(sub: Any, operation: str, help_text: str, egress: str) -> None:
    p = _common(sub.add_parser(operation, help=help_text))
    p.add_argument("ingress", type=int)
    p.add_argument("egress", type=int, nargs=egress)
    p.add_argument("--dry-run", action="store_true", help="print the diff, send nothing")
    p.add_argument(
        "--override-classical",
        action="store_true",
        help="allow touching ports configured as carrying classical channels",
    )
    p.add_argument(
        "--local-budget-only",
        action="store_true",
        help="do not read the other switches (get): the loss budget covers this switch's hop "
        "only, not the path onward across them",
    )
    p.add_argument("--topology", help="topology file with the link losses (default: MadQCI twin)")
    p.set_defaults(func=cmd_change, operation=operation)


def add_subcommand(subparsers: Any) -> None:
    """Register `switch` and its subcommands on the main `qkdtel` parser."""
    switch = subparsers.add_parser(
        "switch",
        help="show and change a fibre switch's cross-connects (NETCONF, guarded)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = switch.add_subparsers(dest="switch_command", required=True)
    _common(sub.add_parser("show", help="the cross-connect map")).set_defaults(func=cmd_show)
    _common(sub.add_parser("diff", help="candidate against running")).set_defaults(func=cmd_diff)
    _change_parser(sub, "connect", "connect a free ingress port to a free egress port", None)
    _change_parser(sub, "move", "move an ingress port to another egress port", None)
    _change_parser(sub, "disconnect", "remove an ingress port's cross-connect", "?")

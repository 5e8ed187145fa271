"""The `qkdtel` command: check, run, poll, drivers, config, sims, spool, osa, otdr, switch."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from qkdtel import __version__, cli_shard, cli_workers, mibs
from qkdtel.cli_common import EXIT_CONFIG, EXIT_OK, EXIT_POLL_FAILED, load_or_exit, stderr, stdout
from qkdtel.cli_lab import add_subcommand as add_lab
from qkdtel.cli_logging import add_logging_options, configure_logging
from qkdtel.cli_spool import add_subcommand as add_spool
from qkdtel.cli_switch import add_subcommand as add_switch
from qkdtel.config import LoadedConfig, json_schema
from qkdtel.output import FORMATS, print_samples
from qkdtel.plugins import (
    PluginNotFound,
    driver_entry_points,
    listener_entry_points,
    load_driver,
    load_listener,
)

if TYPE_CHECKING:
    from qkdtel.live import LiveLinkTable


def cmd_check(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args.config)
    cfg = loaded.config
    sinks = ", ".join(f"{s.name} ({s.type})" for s in cfg.effective_sinks())
    stdout.print(
        f"{args.config}: OK — {len(loaded.devices)} device(s) enabled of {len(cfg.devices)}, "
        f"sinks: {sinks}",
        markup=False,
        highlight=False,
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from qkdtel.live import LiveLinkTable

    loaded = load_or_exit(args.config)
    workers = cli_workers.requested(args, loaded)
    if workers > 1:
        if args.live:
            stderr.print("--live shows one collector: not with --workers", markup=False)
            return EXIT_CONFIG
        return cli_workers.supervise(
            args,
            loaded,
            workers,
            lambda config, restarts: _run_collector(config, None, args.duration, restarts),
        )
    loaded = cli_shard.apply(args, loaded)
    return _run_collector(loaded, LiveLinkTable() if args.live else None, args.duration)


def _run_collector(
    loaded: LoadedConfig,
    view: LiveLinkTable | None,
    duration: float | None,
    worker_restarts: int = 0,
) -> int:
    """One collector on `loaded` until stopped: `qkdtel run`, or one of its `--workers` (restarted
    `worker_restarts` times so far, which its self-telemetry reports)."""
    from qkdtel.daemon import Collector, ListenerStartError
    from qkdtel.live import run_with_live_table
    from qkdtel.spool import SpoolAccessError, SpoolCorruptError, SpoolLayoutError
    from qkdtel.spool_lock import SpoolLockedError
    from qkdtel.spool_space import free_bytes, is_disk_full

    collector = Collector(loaded, observers=[view] if view else [], worker_restarts=worker_restarts)
    try:
        if view is None:
            asyncio.run(collector.run(duration=duration))
        else:
            asyncio.run(run_with_live_table(collector, view, stdout, duration))
    except (
        SpoolLayoutError,
        SpoolAccessError,
        SpoolCorruptError,
        SpoolLockedError,
        ListenerStartError,
    ) as exc:
        stderr.print(f"cannot start: {exc}", markup=False, highlight=False)
        return EXIT_CONFIG
    except Exception as exc:
        # The spool could not even open on a disk with no byte left, not even its reserve
        # (SQLITE_FULL, ENOSPC): nothing can be collected without losing it, so say so.
        if not is_disk_full(exc):
            raise
        spool_dir = loaded.config.collector.spool_dir
        stderr.print(
            f"cannot start: the disk of spool_dir {spool_dir} is full ({free_bytes(spool_dir)}"
            " bytes free) and the spool has no reserve left to open with: free some space",
            markup=False,
            highlight=False,
        )
        return EXIT_POLL_FAILED
    return EXIT_OK


def cmd_poll(args: argparse.Namespace) -> int:
    from qkdtel.poller import DevicePoller

    loaded = cli_shard.apply(args, load_or_exit(args.config))
    mibs.use_state_dir(loaded.config.collector.state_dir)
    devices = loaded.devices
    if args.devices:
        known = {d.config.name for d in devices}
        unknown = [n for n in args.devices if n not in known]
        if unknown:
            stderr.print(f"no enabled device named: {', '.join(unknown)}", highlight=False)
            return EXIT_CONFIG
        devices = [d for d in devices if d.config.name in args.devices]

    async def poll_all():
        pollers = [DevicePoller.create(d, loaded.config.collector.max_backoff) for d in devices]
        try:
            return await asyncio.gather(*(p.poll() for p in pollers))
        finally:
            await asyncio.gather(*(p.aclose() for p in pollers))

    results = asyncio.run(poll_all())
    samples = [s for r in results for s in (r.all_samples() if args.status else r.samples)]
    print_samples(samples, args.format, stdout)
    failed = [r for r in results if not r.ok]
    for r in failed:
        stderr.print(f"{r.device}: {r.error_class}: {r.error}", markup=False, highlight=False)
    return EXIT_POLL_FAILED if failed else EXIT_OK


def _plugin_groups() -> tuple[tuple[str, dict[str, EntryPoint], Callable[[str], type]], ...]:
    """(kind, installed entry points by name, loader) of drivers and of listeners."""
    return (
        ("driver", driver_entry_points(), load_driver),
        ("listener", listener_entry_points(), load_listener),
    )


def cmd_drivers(args: argparse.Namespace) -> int:
    """The installed plugins: drivers, then listeners; exit 1 if one of them fails to load."""
    table = Table(header_style="bold")
    for column in ("plugin", "kind", "provided by", "entry point", "description"):
        table.add_column(column)
    failed = False
    for kind, entry_points, load in _plugin_groups():
        for name, ep in sorted(entry_points.items()):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
            try:
                description = load(name).description
            except PluginNotFound as exc:
                description, failed = f"[red]{escape(str(exc))}[/]", True
            table.add_row(name, kind, dist, ep.value, description)
    stdout.print(table)
    return EXIT_POLL_FAILED if failed else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    schemas: dict[str, dict[str, type]] = {"driver": {}, "listener": {}}
    for kind, entry_points, load in _plugin_groups():
        for name in entry_points:
            try:
                schemas[kind][name] = load(name).options_model
            except PluginNotFound as exc:  # one broken plugin must not hide the others' schema
                stderr.print(f"warning: {exc}; its entries are not in the schema", markup=False)
    schema = json_schema(schemas["driver"], schemas["listener"])
    stdout.out(json.dumps(schema, indent=2), highlight=False)
    return EXIT_OK


SIMULATOR_COMMANDS = {
    "demo": ("qkdtel.sims.demo", "simulated MadQCI network -> daemon -> store, with a live table"),
    "sims": ("qkdtel.sims.cli", "run simulated hardware (the MadQCI twin)"),
    "report": ("qkdtel.sims.report", "a report (Markdown, HTML, PNGs) of what was stored"),
}
"""Subcommands of the simulators (module with `add_subcommand`, help): imported only when one
is run, so `qkdtel run` in production never loads the simulators (tests/test_layers.py)."""


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names (the first word that is no option or option value)."""
    words = iter(argv)
    for word in words:
        if word in ("--log-level", "--log-format"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _add_simulator_commands(sub: Any, command: str | None) -> None:
    """The simulators' subcommands: the one being run in full, the others by name and help."""
    for name, (module, help_text) in SIMULATOR_COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_subcommand(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; `command`: the subcommand about to run, the only simulator command added in
    full (the others are listed by name and help)."""
    parser = argparse.ArgumentParser(
        prog="qkdtel", description="Telemetry and bench control for QKD network hardware."
    )
    parser.add_argument("--version", action="version", version=f"qkdtel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
        return p

    p = with_config(sub.add_parser("check", help="validate a configuration file"))
    p.set_defaults(func=cmd_check)

    p = with_config(sub.add_parser("run", help="run the telemetry daemon"))
    p.add_argument("--live", action="store_true", help="show per-link key rate and QBER live")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    cli_shard.add_options(p)
    cli_workers.add_options(p)
    p.set_defaults(func=cmd_run)

    p = with_config(sub.add_parser("poll", help="poll devices once and print the samples"))
    p.add_argument("devices", nargs="*", help="device names (default: all enabled)")
    p.add_argument("-f", "--format", choices=FORMATS, default="table")
    p.add_argument("--status", action="store_true", help="include qkdtel_device_status points")
    cli_shard.add_options(p)
    p.set_defaults(func=cmd_poll)

    p = sub.add_parser("drivers", help="list installed plugins: drivers and listeners")
    p.set_defaults(func=cmd_drivers)

    p = sub.add_parser("config", help="configuration helpers")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("schema", help="print the JSON Schema of the file").set_defaults(
        func=cmd_schema
    )

    _add_simulator_commands(sub, command)
    add_spool(sub)
    add_lab(sub)
    add_switch(sub)
    add_logging_options(parser)  # last: on every subcommand too
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_word(argv)).parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

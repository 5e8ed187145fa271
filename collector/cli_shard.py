"""`--shard i/N` and `--shard-from-hostname N` of `qkdtel run` and `qkdtel poll`."""

from __future__ import annotations

import argparse
import os
import socket

from qkdtel import shard
from qkdtel.cli_common import EXIT_CONFIG, stderr
from qkdtel.config import LoadedConfig


def add_options(parser: argparse.ArgumentParser) -> None:
    """The two ways to name this collector's shard on the command line (either overrides the
    file's `collector.shard`)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--shard",
        metavar="I/N",
        help="poll only shard I (from 0) of N: the devices rendezvous hashing gives it",
    )
    group.add_argument(
        "--shard-from-hostname",
        metavar="N",
        type=int,
        help="shard I of N, I being the number ending $HOSTNAME (a StatefulSet pod's ordinal)",
    )


def _requested(args: argparse.Namespace, loaded: LoadedConfig) -> tuple[int, int] | None:
    """The shard asked for: the command line first, then the file; None: not sharded."""
    if args.shard is not None:
        return shard.parse(args.shard)
    if args.shard_from_hostname is not None:
        hostname = os.environ.get("HOSTNAME") or socket.gethostname()
        return shard.from_hostname(hostname, args.shard_from_hostname)
    settings = loaded.config.collector.shard
    return None if settings is None else (settings.index, settings.count)


def requested_or_exit(args: argparse.Namespace, loaded: LoadedConfig) -> tuple[int, int] | None:
    """The shard asked for (None: not sharded), or exit 2 naming what is wrong."""
    try:
        return _requested(args, loaded)
    except shard.ShardError as exc:
        stderr.print(f"{exc}", markup=False, highlight=False)
        raise SystemExit(EXIT_CONFIG) from None


def apply(args: argparse.Namespace, loaded: LoadedConfig) -> LoadedConfig:
    """`loaded` cut down to this collector's shard, or exit 2 naming what is wrong."""
    requested = requested_or_exit(args, loaded)
    if requested is None:
        return loaded
    return shard.select(loaded, *requested)

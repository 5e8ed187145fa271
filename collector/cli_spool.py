"""`qkdtel spool ...`: look into the delivery spool, and requeue the lines sinks rejected.

    qkdtel spool rejected -c qkdtel.yaml                 # list them (id, sink, time, reason, line)
    qkdtel spool rejected -c qkdtel.yaml --sink influxdb # only those one sink refused
    qkdtel spool rejected -c qkdtel.yaml --requeue       # send them all again
    qkdtel spool rejected -c qkdtel.yaml --requeue 12 13 # send these again
    qkdtel spool check -c qkdtel.yaml                    # look for damage (exit 1 if damaged)
    qkdtel spool status -c qkdtel.yaml [--json]          # backlog per sink, oldest point, bytes,
                                                         # and orphaned spools (docs/scaling.md)

Works while the daemon runs (the spool is SQLite in WAL mode); the daemon picks requeued lines
up within `collector.flush_interval`. Requeued lines that are still refused are set aside again
in the same request that writes the good points around them: they never hold those up.

Requeue after fixing the cause. A field type conflict ("input field "f" on measurement "m" is
type float, already exists as type integer") on InfluxDB 1.x: the type is held per shard (one
per shard-group duration, 7 days by default), so DROP SERIES does not clear it. Checked on
influxd 1.6: after DROP SERIES the field keeps its type and the line is refused again; after
`DROP MEASUREMENT "m"` (which deletes all of m's data, in every shard) it is stored; a point of
the new type whose time falls in a later shard group is stored without either. So: make the
driver or config write that value to a new field or measurement name (new points are then
fine); the refused lines keep their name, type and time, and are only stored once their shard
no longer holds the field (DROP MEASUREMENT, or the shard dropped or expired).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from qkdtel import cli_workers
from qkdtel.cli_common import EXIT_CONFIG, EXIT_OK, EXIT_POLL_FAILED, load_or_exit, stderr, stdout
from qkdtel.config import LoadedConfig, ShardSettings
from qkdtel.spool import (
    SPOOL_FILE,
    SpoolAccessError,
    SpoolCorruptError,
    SpoolLayoutError,
    SpoolStatus,
    check_spool,
    list_rejected,
    requeue_rejected,
    spool_status,
)
from qkdtel.spool_adopt import orphan_pending, orphans

HINT = (
    "lines refused for a field type conflict: DROP SERIES does not clear it on InfluxDB 1.x; "
    "write to a new field or measurement, or DROP MEASUREMENT, then requeue (see --help)"
)


def _spool_path(args: argparse.Namespace) -> Path:
    return load_or_exit(args.config).config.collector.spool_dir / SPOOL_FILE


def cmd_rejected(args: argparse.Namespace) -> int:
    """List the rejected lines, or requeue them with --requeue."""
    path = _spool_path(args)
    if not path.exists():
        stderr.print(f"no spool at {path}", highlight=False)
        return EXIT_CONFIG
    try:
        if args.requeue is not None:
            moved = requeue_rejected(path, ids=args.requeue, sink=args.sink)
            stdout.print(f"requeued {moved} line(s)", highlight=False)
            return EXIT_OK
        rows = list_rejected(path, sink=args.sink)
    except (SpoolLayoutError, SpoolCorruptError, SpoolAccessError) as exc:
        stderr.print(str(exc), markup=False, highlight=False)
        return EXIT_CONFIG
    for row in rows:
        when = dt.datetime.fromtimestamp(row.time_ns / 1e9, dt.UTC).isoformat(timespec="seconds")
        stdout.print(f"{row.id}\t{row.sink}\t{when}\t{row.reason}", markup=False, highlight=False)
        stdout.print(f"\t{row.line}", markup=False, highlight=False)
    stdout.print(f"{len(rows)} rejected line(s)", highlight=False)
    if any("field type conflict" in row.reason for row in rows):
        stdout.print(HINT, markup=False, highlight=False)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Check the spool for damage as the daemon does at start; exit 1 if damaged (the daemon
    moves a damaged spool aside and salvages it when it starts), 2 if it cannot be checked."""
    path = _spool_path(args)
    try:
        check_spool(path)
    except FileNotFoundError:
        stderr.print(f"no spool at {path}", highlight=False)
        return EXIT_CONFIG
    except SpoolCorruptError as exc:
        stderr.print(
            f"{exc}; `qkdtel run` moves it aside and salvages what it can when it starts",
            markup=False,
            highlight=False,
        )
        return EXIT_POLL_FAILED
    except (SpoolLayoutError, SpoolAccessError) as exc:
        stderr.print(str(exc), markup=False, highlight=False)
        return EXIT_CONFIG
    stdout.print(f"{path}: OK", highlight=False)
    return EXIT_OK


def _age(oldest_ns: int | None, now_ns: int) -> str:
    """How long ago a point was taken, for a person: `3m12s`, `2h05m`, `-` for none."""
    if oldest_ns is None:
        return "-"
    seconds = max(0, (now_ns - oldest_ns) // 1_000_000_000)
    hours, rest = divmod(seconds, 3600)
    if hours:
        return f"{hours}h{rest // 60:02d}m"
    return f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


def _file_layout(loaded: LoadedConfig) -> tuple[ShardSettings | None, str]:
    """The layout `qkdtel run -c FILE` runs in as the file sets it (`collector.shard`,
    `collector.workers`; --shard or --workers on the command line would change it), for the
    orphan rule (`qkdtel.spool_adopt`), and how to say it."""
    host_shard = loaded.config.collector.shard
    host = (host_shard.index, host_shard.count) if host_shard else None
    workers = cli_workers.from_file(loaded)
    if host is None and workers == 1:
        return None, "unsharded"
    first, count = cli_workers.global_shard(host, workers, 0)
    running = ShardSettings(index=first, count=count)
    if workers == 1:
        return running, f"shard {first}/{count}"
    return running, f"{workers} workers, shards {first}-{first + workers - 1} of {count}"


def _orphans(loaded: LoadedConfig) -> tuple[list[dict[str, Any]], str]:
    """The orphaned spools beside `spool_dir` for the file's layout, each with the points
    pending for one of the configured sinks (None and the problem when it cannot be read)."""
    running, layout = _file_layout(loaded)
    sinks = [s.name for s in loaded.config.effective_sinks()]
    found: list[dict[str, Any]] = []
    for directory in orphans(loaded.config.collector.spool_dir, running):
        try:
            found.append({"spool": str(directory), "pending": orphan_pending(directory, sinks)})
        except (SpoolLayoutError, SpoolCorruptError, SpoolAccessError, OSError) as exc:
            found.append({"spool": str(directory), "pending": None, "problem": str(exc)})
    return found, layout


def cmd_status(args: argparse.Namespace) -> int:
    """Backlog per sink, the oldest pending point's age, bytes on disk; read-only, so it works
    while the daemon runs (WAL). Then the orphaned spools the next `qkdtel run` adopts."""
    loaded = load_or_exit(args.config)
    path = loaded.config.collector.spool_dir / SPOOL_FILE
    found, layout = _orphans(loaded)
    try:
        status = spool_status(path)
    except FileNotFoundError:
        if not found:
            stderr.print(f"no spool at {path}", highlight=False)
            return EXIT_CONFIG
        status = None
    except (SpoolLayoutError, SpoolCorruptError, SpoolAccessError) as exc:
        stderr.print(str(exc), markup=False, highlight=False)
        return EXIT_CONFIG
    if args.json:
        _print_json(path, status, found)
    else:
        _print_text(path, status, found, layout)
    return EXIT_OK


def _print_json(path: Path, status: SpoolStatus | None, found: list[dict[str, Any]]) -> None:
    now = time.time_ns()
    doc = {
        "spool": str(path),
        "points": status.points if status else 0,
        "bytes_on_disk": status.bytes_on_disk if status else 0,
        "sinks": [
            {
                "sink": s.sink,
                "pending": s.pending,
                "oldest_pending_age_s": None
                if s.oldest_ns is None
                else round((now - s.oldest_ns) / 1e9, 3),
                "rejected": s.rejected,
            }
            for s in (status.sinks if status else [])
        ],
        "orphans": found,
    }
    stdout.out(json.dumps(doc, indent=2), highlight=False)


def _print_text(
    path: Path, status: SpoolStatus | None, found: list[dict[str, Any]], layout: str
) -> None:
    if status is None:
        stdout.print(f"no spool at {path} yet", markup=False, highlight=False)
    else:
        _print_backlog(path, status)
    for orphan in found:
        held = orphan["pending"]
        what = f"{held:,} pending point(s)" if held is not None else orphan["problem"]
        stdout.print(f"{orphan['spool']}: {what}", markup=False, highlight=False)
    if found:
        stdout.print(
            f"{len(found)} orphaned spool(s): no collector of this file's layout ({layout}) owns"
            f" them; the next `qkdtel run` ({layout}) adopts them (delivers and removes them)",
            markup=False,
            highlight=False,
        )


def _print_backlog(path: Path, status: SpoolStatus) -> None:
    now = time.time_ns()
    mib = status.bytes_on_disk / (1 << 20)
    stdout.print(
        f"{path}: {status.points} point(s), {mib:.1f} MiB on disk (database + WAL)",
        markup=False,
        highlight=False,
    )
    width = max([len("sink"), *(len(s.sink) for s in status.sinks)])
    row = f"{{:<{width}}}  {{:>10}}  {{:>14}}  {{:>8}}"
    stdout.print(row.format("sink", "pending", "oldest pending", "rejected"), highlight=False)
    for s in status.sinks:
        line = row.format(s.sink, s.pending, _age(s.oldest_ns, now), s.rejected)
        stdout.print(line, markup=False, highlight=False)


def add_subcommand(subparsers: Any) -> None:
    """Add `spool` to the `qkdtel` command's subparsers."""
    spool = subparsers.add_parser(
        "spool",
        help="inspect the delivery spool",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    rejected = spool_sub.add_parser(
        "rejected",
        help="list the lines a sink refused (malformed, type conflict...), or requeue them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rejected.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    rejected.add_argument("--sink", help="only the lines this sink refused")
    rejected.add_argument(
        "--requeue",
        nargs="*",
        type=int,
        metavar="ID",
        help="send the listed lines (all when no id is given) to the sinks again",
    )
    rejected.set_defaults(func=cmd_rejected)
    check = spool_sub.add_parser(
        "check", help="look for damage in the spool file, as the daemon does when it starts"
    )
    check.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    check.set_defaults(func=cmd_check)
    status = spool_sub.add_parser(
        "status",
        help="backlog per sink, the oldest pending point's age, bytes on disk (read-only)",
    )
    status.add_argument("-c", "--config", required=True, help="configuration file (YAML)")
    status.add_argument("--json", action="store_true", help="one JSON document (for scripts)")
    status.set_defaults(func=cmd_status)

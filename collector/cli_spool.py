"""`qkdtel spool ...`: look into the delivery spool, and requeue the lines sinks rejected.

    qkdtel spool rejected -c qkdtel.yaml                 # list them (id, sink, time, reason, line)
    qkdtel spool rejected -c qkdtel.yaml --sink influxdb # only those one sink refused
    qkdtel spool rejected -c qkdtel.yaml --requeue       # send them all again
    qkdtel spool rejected -c qkdtel.yaml --requeue 12 13 # send these again
    qkdtel spool check -c qkdtel.yaml                    # look for damage (exit 1 if damaged)
    qkdtel spool status -c qkdtel.yaml [--json]          # backlog per sink, oldest point, bytes

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

from qkdtel.cli_common import EXIT_CONFIG, EXIT_OK, EXIT_POLL_FAILED, load_or_exit, stderr, stdout
from qkdtel.spool import (
    SPOOL_FILE,
    SpoolAccessError,
    SpoolCorruptError,
    SpoolLayoutError,
    check_spool,
    list_rejected,
    requeue_rejected,
    spool_status,
)

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


def cmd_status(args: argparse.Namespace) -> int:
    """Backlog per sink, the oldest pending point's age, bytes on disk; read-only, so it works
    while the daemon runs (WAL)."""
    path = _spool_path(args)
    try:
        status = spool_status(path)
    except FileNotFoundError:
        stderr.print(f"no spool at {path}", highlight=False)
        return EXIT_CONFIG
    except (SpoolLayoutError, SpoolCorruptError, SpoolAccessError) as exc:
        stderr.print(str(exc), markup=False, highlight=False)
        return EXIT_CONFIG
    now = time.time_ns()
    if args.json:
        doc = {
            "spool": str(path),
            "points": status.points,
            "bytes_on_disk": status.bytes_on_disk,
            "sinks": [
                {
                    "sink": s.sink,
                    "pending": s.pending,
                    "oldest_pending_age_s": None
                    if s.oldest_ns is None
                    else round((now - s.oldest_ns) / 1e9, 3),
                    "rejected": s.rejected,
                }
                for s in status.sinks
            ],
        }
        stdout.out(json.dumps(doc, indent=2), highlight=False)
        return EXIT_OK
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
    return EXIT_OK


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

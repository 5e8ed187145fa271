"""Default locations, from the environment a service runs in, never the working directory.

A daemon started by systemd, cron or a container has a working directory nobody chose (`/`,
often read-only), so defaults relative to it would scatter state or fail. In order:
systemd's `$STATE_DIRECTORY` (set by `StateDirectory=qkdtel`; a colon-separated list when the
unit names several, the first is ours), else `/var/lib/qkdtel` for root, else the user's own
state directory (`$XDG_STATE_HOME/qkdtel`, by default `~/.local/state/qkdtel`).
`qkdtel.mibs` compiles into `<state>/mibs`, the collector's `spool_dir` parent, so all of it
sits together.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_STATE_DIR = Path("/var/lib/qkdtel")


def default_state_dir() -> Path:
    """The directory a qkdtel daemon keeps its state in when the file names none."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME")
    # XDG: a relative value is invalid and must be ignored
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "qkdtel"


def default_spool_dir() -> Path:
    """`<state>/spool`: `collector.spool_dir` when the file names none."""
    return default_state_dir() / "spool"


def default_lineprotocol_dir() -> Path:
    """`<state>/lineprotocol`: the local line-protocol store when the file names no path."""
    return default_state_dir() / "lineprotocol"

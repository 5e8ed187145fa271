"""What every `qkdtel` subcommand module shares: exit codes, the consoles, loading the file.

Its own module so that cli.py (the parser) and the subcommand modules it registers
(cli_spool, cli_lab) all import it at the top, and none imports another to reach these.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from qkdtel.config import ConfigError, LoadedConfig, load_config

EXIT_OK, EXIT_POLL_FAILED, EXIT_CONFIG = 0, 1, 2

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def load_or_exit(path: str) -> LoadedConfig:
    """The loaded file, or exit 2 after printing every problem (`check`, `run`, `poll` and
    `spool` all load through here, so each refuses a file with the same words)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        stderr.print(f"[bold red]{escape(exc.source)}: invalid configuration[/]", highlight=False)
        for problem in exc.problems:
            stderr.print(f"  {problem}", markup=False, highlight=False)
        raise SystemExit(EXIT_CONFIG) from None  # the problems are printed: no traceback

"""Logging of every `qkdtel` command: `--log-level` and `--log-format text|json`.

Both options are accepted before the subcommand and after it (`qkdtel run -c f --log-level
DEBUG`, as operators type them in a unit's ExecStart). `json` writes one object per line with
`time`, `level`, `logger`, `message` and every `extra=` field of the record, for journald or a
log shipper (python-json-logger does the encoding). Libraries that narrate their own work at
INFO (pysnmp, paramiko, ncclient, httpx, APScheduler, urllib3) are held at WARNING unless the
level asked for is DEBUG: at INFO an operator sees qkdtel's messages, not theirs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
CHATTY_LIBRARIES = (
    "pysnmp",
    "pysmi",
    "paramiko",
    "ncclient",
    "httpx",
    "httpcore",
    "apscheduler",
    "urllib3",
    "influxdb_client",
)


def log_level(text: str) -> str:
    """argparse type of `--log-level`: a bad level is a usage error (exit 2) naming the choices."""
    level = text.upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a level: use one of {', '.join(LEVELS)}")
    return level


def add_logging_options(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """`--log-level` and `--log-format` on `parser` and on every subcommand below it.

    Only the top level has defaults; below, an option given overrides it and one not given
    leaves it alone (argparse.SUPPRESS).
    """
    parser.add_argument(
        "--log-level",
        type=log_level,
        default="INFO" if top else argparse.SUPPRESS,
        help=f"one of {', '.join(LEVELS)} (default INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text" if top else argparse.SUPPRESS,
        help="text, or json: one object per line (default text)",
    )
    for action in parser._actions:  # argparse keeps subcommands here and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                add_logging_options(subparser, top=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send records of `level` and above to stderr, as text or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = logging.DEBUG if level == "DEBUG" else max(logging.WARNING, logging.getLevelName(level))
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)

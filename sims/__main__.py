"""`python -m qkdtel.sims up ...`: the `qkdtel sims` command without the rest of the CLI."""

from __future__ import annotations

import argparse
import logging
import sys

from qkdtel.sims.cli import add_sims_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qkdtel.sims")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    add_sims_commands(parser.add_subparsers(dest="sims_command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

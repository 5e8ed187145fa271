"""Run `python -m qkdtel.cli ARGS` many times, fast: each run in a forked child of one process.

A cold `python -m qkdtel.cli` spends about a second importing (the argument parser pulls in
the simulators and the bench tools); a corpus of a hundred files times two commands would take
minutes on a shared machine. This process imports all of that once, then forks one child per
run. The child does what the interpreter does for `-m`: `runpy.run_module(..., "__main__")`
with its own argv, working directory, stdout and stderr (files, at the descriptor level), and
an uncaught exception printed as a traceback with exit status 1. The parent records each exit
status. Runs one after another, so no child sees another's state.

Usage: python -m tests.cli_batch JOBS.json RESULTS.json, JOBS a list of
{"argv": [...], "cwd": ..., "stdout": path, "stderr": path}; RESULTS the list of exit statuses.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import traceback

WARM = ("qkdtel.cli", "qkdtel.daemon", "qkdtel.live", "qkdtel.spool", "qkdtel.plugins")


def _warm_up() -> None:
    """Import what every run would import, drivers included, so children start warm."""
    for module in WARM:
        importlib.import_module(module)
    from qkdtel.cli import SIMULATOR_COMMANDS, build_parser
    from qkdtel.plugins import driver_entry_points, load_driver

    for command in SIMULATOR_COMMANDS:
        build_parser(command)  # its subcommands' modules are imported in there

    for name in driver_entry_points():
        load_driver(name)


def _child(job: dict) -> int:
    """Be `python -m qkdtel.cli *argv` in `cwd`, writing to the job's files."""
    os.chdir(job["cwd"])
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.argv = ["qkdtel", *job["argv"]]
    sys.modules.pop("qkdtel.cli")  # as in a cold `-m`: the module runs as __main__ only
    try:
        runpy.run_module("qkdtel.cli", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def run_all(jobs: list[dict]) -> list[int]:
    """Each job's exit status, in order."""
    statuses = []
    for job in jobs:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(job))
        _, wait_status = os.waitpid(pid, 0)
        statuses.append(os.waitstatus_to_exitcode(wait_status))
    return statuses


def main() -> None:
    jobs_file, results_file = sys.argv[1:]
    with open(jobs_file, encoding="utf-8") as f:
        jobs = json.load(f)
    _warm_up()
    with open(results_file, "w", encoding="utf-8") as f:
        json.dump(run_all(jobs), f)


if __name__ == "__main__":
    main()

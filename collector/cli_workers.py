"""`qkdtel run --workers N`: N collector processes on one host, under a supervisor.

One collector is one asyncio loop on one core; a machine's other cores stay idle however many
devices wait (bench/README.md, "capacity.py"). `--workers N` (or `collector.workers`, `auto` =
one per CPU this process may run on) forks N workers from the parent once it has loaded the
file. Each is a shard of the existing rendezvous scheme (`qkdtel.shard`): with the host itself
shard i of M (`--shard i/M`, the file, a StatefulSet ordinal) or unsharded (0 of 1), worker w is
global shard i*N + w of M*N. So each worker has its own spool (`<spool_dir>.shard-<i*N+w>`) and
its own lock on it, tags its `qkdtel_collector` with that shard, and on SIGHUP reloads only its
share, exactly like a `--shard` collector; every host of a sharded inventory must run the same N.

The parent only supervises; it polls nothing and opens no spool:
- it forwards SIGTERM, SIGINT and SIGHUP to every worker (SIGHUP also reloads its own copy of
  the file, which the next restarted worker starts from; a bad file keeps the one it had);
- a worker that dies (a signal, an exit status other than 0 and 2) is restarted after a back-off
  (1 s doubling to 60 s; back to 1 s once a worker has run for 60 s), logged with its count;
- a worker that exits 2 (it could not start: its spool locked by another daemon, a port taken)
  cannot be helped by a restart: the others are stopped and the parent exits 2;
- it exits when every worker has stopped, with the workers' worst status; a worker still running
  `shutdown_grace` + 30 s after a stop is killed;
- workers get SIGTERM if the parent dies (PR_SET_PDEATHSIG), so none is left polling alone.

Health: worker w serves `collector.health` on its port + w (each worker's /healthz speaks for
its own sink writers and spool: probe every one). Listeners (a trap port can be bound once) run
in worker 0 only; like a sharded collector's, they attribute notifications by every device
of the file, not only the worker's own (`LoadedConfig.unpolled`).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from qkdtel import shard
from qkdtel.cli_common import EXIT_CONFIG, EXIT_OK, EXIT_POLL_FAILED, stderr
from qkdtel.config import ConfigError, HealthSettings, LoadedConfig, load_config

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WAITED = {*FORWARDED, signal.SIGCHLD}
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0
"""A worker that ran this long before dying is restarted after FIRST_BACKOFF_S again."""
KILL_AFTER_GRACE_S = 30.0
PR_SET_PDEATHSIG = 1

RunWorker = Callable[[LoadedConfig, int], int]
"""Runs one worker on its configuration, told how often its slot was restarted; its exit status."""
"""Runs one collector on its configuration in the worker process; returns the exit status."""


def add_options(parser: argparse.ArgumentParser) -> None:
    """`--workers N|auto` of `qkdtel run` (overrides the file's `collector.workers`)."""
    parser.add_argument(
        "--workers",
        metavar="N|auto",
        help="run N collector processes on this host, each a shard (auto: one per CPU)",
    )


def cpu_count() -> int:
    """CPUs this process may run on (its affinity: a container's cpuset, `taskset`)."""
    return len(os.sched_getaffinity(0))


def _parse(value: int | str, where: str) -> int:
    """`4` or `auto` -> a worker count; anything else exits 2 naming `where`."""
    if value == "auto":
        return cpu_count()
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 256:
        stderr.print(f"{where} {value!r}: expected 1 to 256 or auto", markup=False)
        raise SystemExit(EXIT_CONFIG)
    return count


def requested(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    """How many workers to run: the command line, else the file."""
    if args.workers is not None:
        return _parse(args.workers, "--workers")
    return from_file(loaded)


def from_file(loaded: LoadedConfig) -> int:
    """How many workers the file asks for (`collector.workers`, `auto` resolved)."""
    return _parse(loaded.config.collector.workers, "collector.workers")


def global_shard(host: tuple[int, int] | None, workers: int, w: int) -> tuple[int, int]:
    """(index, count) of worker `w` of `workers` on host shard `host` = (i, M) (None: 0 of 1):
    global shard i*N + w of M*N."""
    index, count = host or (0, 1)
    return index * workers + w, count * workers


def _health_plus(health: HealthSettings | None, offset: int) -> HealthSettings | None:
    """`health` with its port moved up by `offset` (port 0 stays 0: the kernel picks)."""
    if health is None or offset == 0:
        return health
    host, _, port = health.listen.rpartition(":")
    if int(port) == 0:
        return health
    if int(port) + offset > 65535:
        raise shard.ShardError(
            f"collector.health.listen {health.listen}: worker {offset} would need port"
            f" {int(port) + offset} (each worker serves on the port + its number)"
        )
    return health.model_copy(update={"listen": f"{host}:{int(port) + offset}"})


def worker_configs(
    loaded: LoadedConfig, host: tuple[int, int] | None, workers: int
) -> list[LoadedConfig]:
    """Each worker's configuration: global shard i*N + w of M*N (`host` = (i, M), None: 0 of
    1), its health port + w, the listeners in worker 0 only."""
    shard.check(*global_shard(host, workers, workers - 1))
    out = []
    for w in range(workers):
        mine = shard.select(loaded, *global_shard(host, workers, w))
        settings = mine.config.collector.model_copy(
            update={"health": _health_plus(mine.config.collector.health, w), "workers": 1}
        )
        out.append(
            dataclasses.replace(
                mine,
                config=mine.config.model_copy(update={"collector": settings}),
                listeners=mine.listeners if w == 0 else [],
            )
        )
    return out


def _describe(status: int) -> str:
    """A wait status in words: `exit status 1`, `killed by SIGKILL`."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


@dataclass
class Worker:
    """One worker process as the supervisor knows it."""

    number: int
    config: LoadedConfig
    pid: int | None = None
    last_pid: int = 0
    started: float = 0.0
    restarts: int = 0
    backoff: float = FIRST_BACKOFF_S
    restart_at: float | None = None
    exit_code: int | None = None
    """Set once the worker is over for good (stopped, or not to be restarted)."""

    @property
    def label(self) -> str:
        """`worker 1 (shard 1/2)`: what the log calls it."""
        s = self.config.config.collector.shard
        return f"worker {self.number} (shard {s.index}/{s.count})" if s else f"worker {self.number}"


class Supervisor:
    """Forks the workers, forwards signals to them, restarts the ones that die."""

    def __init__(
        self,
        configs: list[LoadedConfig],
        run_worker: RunWorker,
        reconfigure: Callable[[LoadedConfig], list[LoadedConfig]],
    ) -> None:
        self.workers = [Worker(w, config) for w, config in enumerate(configs)]
        self._run_worker = run_worker
        self._reconfigure = reconfigure
        self._stopping_since: float | None = None
        self._fatal = False
        self._killed = False

    # The parent's side.

    def run(self) -> int:
        """Supervise until every worker is over; the exit status for `qkdtel run`."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
        try:
            for worker in self.workers:
                self._start(worker)
            log.info("supervising %d worker(s)", len(self.workers))
            while any(w.exit_code is None for w in self.workers):
                info = signal.sigtimedwait(WAITED, self._wait_s())
                if info is not None and info.si_signo != signal.SIGCHLD:
                    self._forward(signal.Signals(info.si_signo))
                self._reap()
                self._restart_due()
                self._kill_overdue()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        restarts = sum(w.restarts for w in self.workers)
        log.info("all workers stopped (%d restart(s))", restarts)
        if self._fatal:
            return EXIT_CONFIG
        return max(w.exit_code or EXIT_OK for w in self.workers)

    def _wait_s(self) -> float:
        """How long to sleep for a signal: until the next restart is due, at most 1 s."""
        due = [w.restart_at for w in self.workers if w.restart_at is not None]
        return max(0.0, min([1.0, *(t - time.monotonic() for t in due)]))

    def _forward(self, sig: signal.Signals) -> None:
        """Pass a signal to every running worker; SIGTERM/SIGINT also end restarting."""
        if sig == signal.SIGHUP:
            self._reload()
        elif self._stopping_since is None:
            log.info("%s: stopping %d worker(s)", sig.name, len(self.workers))
            self._stop_restarting()
        for worker in self.workers:
            if worker.pid is not None:
                os.kill(worker.pid, sig)

    def _stop_restarting(self) -> None:
        """From now on, no worker is started again; those waiting to be are over."""
        self._stopping_since = time.monotonic()
        for worker in self.workers:
            if worker.pid is None and worker.exit_code is None:
                worker.restart_at, worker.exit_code = None, EXIT_OK

    def _reload(self) -> None:
        """SIGHUP: the next restarted worker starts from the file as it is now (if valid)."""
        source = self.workers[0].config.source
        if source is None:
            return
        try:
            configs = self._reconfigure(load_config(source))
        except (ConfigError, shard.ShardError) as exc:
            log.error("reload: %s is invalid; restarted workers keep the running one", exc)
            return
        for worker, config in zip(self.workers, configs, strict=True):
            worker.config = config

    def _reap(self) -> None:
        """Collect every worker that has ended since the last look."""
        for worker in self.workers:
            if worker.pid is None:
                continue
            pid, status = os.waitpid(worker.pid, os.WNOHANG)
            if pid == 0:
                continue
            worker.pid = None
            self._ended(worker, status)

    def _ended(self, worker: Worker, status: int) -> None:
        """Decide what a worker's end means: over, fatal, or restart after a back-off."""
        code = os.waitstatus_to_exitcode(status)
        ran = time.monotonic() - worker.started
        if self._stopping_since is not None or code == EXIT_OK:
            worker.exit_code = code if code >= 0 else EXIT_POLL_FAILED
            log.info("%s stopped: %s", worker.label, _describe(status))
            return
        if code == EXIT_CONFIG:
            log.error("%s cannot start (exit status 2); stopping the others", worker.label)
            worker.exit_code, self._fatal = code, True
            self._forward(signal.SIGTERM)
            return
        if ran >= STABLE_AFTER_S:
            worker.backoff = FIRST_BACKOFF_S
        worker.restarts += 1
        worker.restart_at = time.monotonic() + worker.backoff
        log.error(
            "%s (PID %d) died: %s after %.1f s; restart %d in %.0f s",
            *(worker.label, worker.last_pid, _describe(status), ran, worker.restarts),
            worker.backoff,
        )
        worker.backoff = min(MAX_BACKOFF_S, worker.backoff * 2)

    def _restart_due(self) -> None:
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= time.monotonic():
                worker.restart_at = None
                self._start(worker)

    def _kill_overdue(self) -> None:
        """A worker still running long after a stop: SIGKILL (its spool keeps what it had)."""
        if self._stopping_since is None or self._killed:
            return
        grace = max(w.config.config.collector.shutdown_grace for w in self.workers)
        if time.monotonic() - self._stopping_since < grace + KILL_AFTER_GRACE_S:
            return
        self._killed = True
        for worker in self.workers:
            if worker.pid is not None:
                log.error("%s did not stop in time: killing it", worker.label)
                os.kill(worker.pid, signal.SIGKILL)

    def _start(self, worker: Worker) -> None:
        """Fork the worker; the child never returns from here."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(worker.config, worker.restarts)
        worker.pid, worker.last_pid, worker.started = pid, pid, time.monotonic()
        log.info("%s started (PID %d)", worker.label, pid)

    # The child's side.

    def _child(self, config: LoadedConfig, restarts: int) -> None:
        """In the forked worker: default signals (SIGHUP ignored until the collector's loop
        takes it: a reload forwarded while the worker starts must not kill it), die with the
        parent, run, exit."""
        code = EXIT_POLL_FAILED
        try:
            for sig in WAITED:
                signal.signal(sig, signal.SIG_IGN if sig == signal.SIGHUP else signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            _die_with_parent()
            code = self._run_worker(config, restarts)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else EXIT_POLL_FAILED
        except BaseException:
            log.exception("worker failed")
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker when the supervisor dies (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the request: stop now
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(
    args: argparse.Namespace, loaded: LoadedConfig, workers: int, run_worker: RunWorker
) -> int:
    """`qkdtel run --workers N`: the workers' configurations, then supervise them."""
    host = requested_host(args, loaded)

    def reconfigure(new: LoadedConfig) -> list[LoadedConfig]:
        return worker_configs(new, host, workers)

    try:
        configs = reconfigure(loaded)
    except shard.ShardError as exc:
        stderr.print(f"{exc}", markup=False, highlight=False)
        return EXIT_CONFIG
    return Supervisor(configs, run_worker, reconfigure).run()


def requested_host(args: argparse.Namespace, loaded: LoadedConfig) -> tuple[int, int] | None:
    """This host's shard (from --shard, --shard-from-hostname or the file), or exit 2."""
    from qkdtel.cli_shard import requested_or_exit

    return requested_or_exit(args, loaded)

"""The telemetry daemon: schedules every device's polls and hands their samples to delivery.

One asyncio loop runs everything. APScheduler fires each device at its interval; a semaphore
bounds how many polls run at once; each poll has its own timeout, so a hung, slow or broken
device never delays the others (blocking drivers run in worker threads, see
`qkdtel.sdk.BlockingDriver`). Listeners (pushed data: SNMP traps...) run beside the polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from qkdtel import mibs
from qkdtel.config import ConfigError, HealthSettings, LoadedConfig, load_config
from qkdtel.delivery import Delivery
from qkdtel.plugins import load_listener
from qkdtel.poller import DevicePoller, PollResult
from qkdtel.reload import plan_reload
from qkdtel.sdk import DeviceSource, Listener, ListenerContext, Sample
from qkdtel.shard import select as select_shard
from qkdtel.spool_adopt import adopt_orphans
from qkdtel.spool_lock import SpoolLock

if TYPE_CHECKING:
    from qkdtel.health import HealthServer

log = logging.getLogger(__name__)

SampleObserver = Callable[[list[Sample]], None]

LISTENER_MEASUREMENT = "qkdtel_listener"
FIRST_POLL_SPREAD_S = 5.0
"""First polls of a small inventory start within this long (or the interval, if shorter)."""
FIRST_POLLS_PER_S = 200.0
"""A large inventory spreads its first polls so that at most this many start a second, up to
the whole interval: polls then stay evenly spread every interval after (their schedule is
anchored at the first), instead of all of them falling in the same few seconds of each
interval, a burst that made 10,000 devices on two workers start 8 % of their polls late."""


class ListenerStartError(RuntimeError):
    """A listener could not start (its port is taken...); the message names it and why."""


def _address_of(options: object) -> str | None:
    """A device's `address` option, if its driver has one: listeners match senders by it."""
    address = getattr(options, "address", None)
    return address if isinstance(address, str) else None


class Collector:
    """Polls the configured devices on schedule until `stop()`; nothing collected is lost.

    `observers` see every batch of samples after it is spooled (the live table of `qkdtel run
    --live` is one).
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        observers: list[SampleObserver] | None = None,
        worker_restarts: int = 0,
    ):
        self.config = loaded.config
        settings = self.config.collector
        mibs.use_state_dir(settings.state_dir)
        self.delivery = Delivery(settings, self.config.effective_sinks())
        self._spool_lock = SpoolLock(settings.spool_dir)
        self.pollers = [DevicePoller.create(d, settings.max_backoff) for d in loaded.devices]
        self.observers = observers or []
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._scheduler = AsyncIOScheduler()
        self._listener_specs = loaded.listeners
        self._running = loaded
        """The configuration in force: the file at start, its devices as of the last reload."""
        self._reload_lock = asyncio.Lock()
        self._listeners: list[Listener] = []
        self.poll_counts: Counter[tuple[str, str]] = Counter()
        """(device, `ok` or the error class) -> polls since start (for /metrics)."""
        self._worker_restarts = worker_restarts
        """Times the `--workers` supervisor restarted this worker's slot (self-telemetry)."""
        self._health = self._health_server(settings.health)

    async def submit(self, samples: list[Sample]) -> None:
        """Spool samples durably, then show them to observers."""
        if not samples:
            return
        await self.delivery.submit(samples)
        for observer in self.observers:
            observer(samples)

    async def _fire(self, poller: DevicePoller) -> None:
        """Scheduled job: start a poll of the device if it is due.

        The poll runs in a task of our own, not in APScheduler's job: the scheduler cancels its
        jobs when it shuts down, and a poll in flight at SIGTERM deserves its grace period.
        """
        if self._stopping.is_set() or not poller.due():
            return
        poller.running = True  # not due again until this poll ends
        self._spawn(self._poll(poller), f"poll:{poller.name}")

    async def _fire_self_telemetry(self) -> None:
        """Scheduled job: spool the collector's own health (in a task of ours, as polls)."""
        if not self._stopping.is_set():
            self._spawn(self._self_telemetry(), "self-telemetry")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._in_flight.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A poll or self-telemetry task ended: an exception it raised is logged now, with its
        traceback, never left to "Task exception was never retrieved" at exit."""
        self._in_flight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)

    def _health_server(self, settings: HealthSettings | None) -> HealthServer | None:
        """The /metrics and /healthz endpoint, if `collector.health` asks for it."""
        if settings is None:
            return None
        from qkdtel.health import DaemonView, HealthServer  # prometheus_client: only if asked

        view = DaemonView(
            self.delivery,
            lambda: dict(self.poll_counts),
            lambda: [(listener.name, listener.counters()) for listener in list(self._listeners)],
            self._worker_restarts,
        )
        return HealthServer(settings, view)

    async def _poll(self, poller: DevicePoller) -> None:
        async with self._semaphore:
            result: PollResult = await poller.poll()
        self.poll_counts[poller.name, result.error_class or "ok"] += 1
        await self.submit(result.all_samples())

    async def _self_telemetry(self) -> None:
        points = self.delivery.telemetry()
        running = sum(t.get_name().startswith("poll:") for t in self._in_flight)
        shard = self.config.collector.shard  # sharded: which collector of several this is
        tags = {} if shard is None else {"shard": str(shard.index)}
        fields = {"polls_running": running, "worker_restarts": self._worker_restarts}
        points = [
            Sample(p.measurement, {**p.tags, **tags}, {**p.fields, **fields}, p.time_ns)
            for p in points
        ]
        await self.submit(points + self._listener_telemetry())

    def _listener_telemetry(self) -> list[Sample]:
        """One `qkdtel_listener` point per listener that counts something (docs/metrics.md)."""
        return [
            Sample(
                LISTENER_MEASUREMENT,
                {"listener": listener.name, "host": socket.gethostname()},
                dict(counters),
            )
            for listener in self._listeners
            if (counters := listener.counters())
        ]

    def _schedule_poller(self, poller: DevicePoller, spread: float) -> None:
        """Poll the device at its interval from now on, the first poll within `spread` s."""
        interval = poller.device.config.interval
        # Spread first polls (stable per device name) so a restart does not hit every device
        # in the same instant, nor every interval after it.
        offset = (zlib.crc32(poller.name.encode()) % 1000) / 1000 * spread
        first = datetime.now().astimezone() + timedelta(seconds=offset)
        poller.schedule_origin = first.timestamp()
        self._scheduler.add_job(
            self._fire,
            IntervalTrigger(seconds=interval),
            args=[poller],
            id=f"poll:{poller.name}",
            next_run_time=first,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(interval)),
        )

    def _spreads(self) -> dict[float, float]:
        """Interval -> over how long the first polls of the devices at that interval spread."""
        counts = Counter(p.device.config.interval for p in self.pollers)
        return {
            interval: min(interval, max(FIRST_POLL_SPREAD_S, n / FIRST_POLLS_PER_S))
            for interval, n in counts.items()
        }

    def _schedule(self) -> None:
        now = datetime.now().astimezone()
        spreads = self._spreads()
        for poller in self.pollers:
            self._schedule_poller(poller, spreads[poller.device.config.interval])
        period = self.config.collector.self_telemetry_interval
        self._scheduler.add_job(
            self._fire_self_telemetry,
            IntervalTrigger(seconds=period),
            id="self-telemetry",
            next_run_time=now + timedelta(seconds=period),
            max_instances=1,
            coalesce=True,
        )

    def _device_sources(self) -> list[DeviceSource]:
        """The configured devices as listeners see them (a driver's `address`, if it has one):
        those polled here and, sharded, those other shards poll (a trap port has one owner)."""
        devices = [poller.device for poller in self.pollers] + self._running.unpolled
        return [
            DeviceSource(
                d.config.name, d.config.driver, _address_of(d.options), dict(d.config.tags)
            )
            for d in devices
        ]

    async def _start_listeners(self) -> None:
        """Start every configured listener; what they emit is spooled like polled samples."""
        context = ListenerContext(devices=tuple(self._device_sources()))
        for spec in self._listener_specs:
            listener = load_listener(spec.type)(spec.name, spec.options)
            try:
                await listener.start(self.submit, context)
            except OSError as exc:  # a port taken, an address gone: the operator must act
                raise ListenerStartError(
                    f"listener {spec.name} ({spec.type}): {exc.strerror or exc}"
                ) from exc
            self._listeners.append(listener)
            log.info("listener %s (%s) started", spec.name, spec.type)

    def _start_health(self) -> None:
        """Serve /metrics and /healthz, if configured; an address in use stops the start."""
        if self._health is None:
            return
        try:
            self._health.start()
        except OSError as exc:
            raise ListenerStartError(f"collector.health: {exc.strerror or exc}") from exc
        log.info("serving /metrics and /healthz on %s", self._health.settings.listen)

    async def _stop_listeners(self) -> None:
        """Stop the listeners; one that fails to stop is logged and does not keep the others."""
        for listener in self._listeners:
            try:
                await listener.stop()
            except Exception:
                log.exception("listener %s: stopping failed", listener.name)
        self._listeners.clear()

    def stop(self) -> None:
        """Ask the daemon to stop (safe from a signal handler)."""
        self._stopping.set()

    def request_reload(self) -> None:
        """SIGHUP: re-read the file the daemon was started with (in a task of ours)."""
        if not self._stopping.is_set():
            self._spawn(self.reload(), "reload")

    async def reload(self) -> bool:
        """Apply the configuration file anew if it is valid (see `qkdtel.reload`); a file
        with errors keeps the running configuration and logs every error with its path."""
        source = self._running.source
        if source is None:
            log.warning("reload: the configuration was not read from a file; nothing to reload")
            return False
        async with self._reload_lock:  # two SIGHUPs in a row: one reload after the other
            try:
                new = await asyncio.to_thread(load_config, source)
            except ConfigError as exc:
                log.error(
                    "reload: %s is invalid (%d error(s)); keeping the running configuration",
                    exc.source,
                    len(exc.problems),
                )
                for problem in exc.problems:
                    log.error("reload: %s: %s", exc.source, problem)
                return False
            running_shard = self.config.collector.shard
            if running_shard is not None:  # the shard this daemon runs as, however it was given
                new = select_shard(new, running_shard.index, running_shard.count)
            plan = plan_reload(self._running, new)
            for name in [*plan.removed, *(d.config.name for d in plan.changed)]:
                self._retire(name)
            fresh = [
                DevicePoller.create(device, self.config.collector.max_backoff)
                for device in [*plan.changed, *plan.added]
            ]
            self.pollers.extend(fresh)
            spreads = self._spreads()
            for poller in fresh:
                self._schedule_poller(poller, spreads[poller.device.config.interval])
            self._running = dataclasses.replace(
                self._running, devices=new.devices, unpolled=new.unpolled
            )
            if plan.added or plan.removed or plan.changed:
                await self._tell_listeners()
            log.info("reload: %s: %s", source, plan.summary())
            if plan.needs_restart:
                log.warning(
                    "reload: %s: changes to %s take effect at the next restart",
                    source,
                    ", ".join(plan.needs_restart),
                )
            return True

    async def _tell_listeners(self) -> None:
        """Give every listener the devices as they are now (after a reload)."""
        context = ListenerContext(devices=tuple(self._device_sources()))
        for listener in self._listeners:
            try:
                await listener.devices_changed(context)
            except Exception:
                log.exception("listener %s: taking the reloaded devices failed", listener.name)

    def _retire(self, name: str) -> None:
        """Stop polling the device `name`; its driver closes once a poll in flight ends."""
        self._scheduler.remove_job(f"poll:{name}")
        poller = next(p for p in self.pollers if p.name == name)
        self.pollers.remove(poller)
        self._spawn(self._close_when_idle(poller), f"retire:{name}")

    @staticmethod
    async def _close_when_idle(poller: DevicePoller) -> None:
        while poller.running:  # its poll task holds it until the poll's timeout at most
            await asyncio.sleep(0.1)
        await poller.aclose()

    async def run(self, duration: float | None = None) -> None:
        """Run until `stop()` (or SIGTERM/SIGINT, or `duration` seconds), then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not main thread
                loop.add_signal_handler(sig, self.stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        with self._spool_lock:  # one daemon per spool, for this one's whole life
            await self.delivery.start()
            try:
                self._start_health()
                await self._start_listeners()
                self._schedule()
                self._scheduler.start()
                log.info("collecting from %d device(s)", len(self.pollers))
                # Spools no collector of this layout owns: delivered beside polling.
                adopting = adopt_orphans(
                    self.delivery, self.config.collector, self._stopping.is_set
                )
                self._spawn(adopting, "adopt-orphans")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=duration)
            finally:
                await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop scheduling, let in-flight polls finish within the grace period, then flush."""
        grace = self.config.collector.shutdown_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        await self._stop_listeners()
        if self._in_flight:
            log.info("waiting up to %.1f s for %d poll(s) in flight", grace, len(self._in_flight))
            _, pending = await asyncio.wait(set(self._in_flight), timeout=grace / 2)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("abandoned %d poll(s) still running at shutdown", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await self._self_telemetry()
        if self._health is not None:
            await self._health.stop()
        await self.delivery.stop(timeout=max(0.5, deadline - loop.time()))
        for poller in self.pollers:
            await poller.aclose()
        log.info("stopped")

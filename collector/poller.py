"""One device's polls: timeout, error accounting, back-off and its `qkdtel_device_status` point.

Kept apart from the scheduler so `qkdtel poll` (one shot, the bench tool) and `qkdtel run`
(the daemon) account for a poll in exactly the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from qkdtel.config import Device
from qkdtel.plugins import load_driver
from qkdtel.sdk import DeviceBusy, Driver, PartialPoll, PollError, Sample, now_ns

log = logging.getLogger(__name__)

STATUS_MEASUREMENT = "qkdtel_device_status"


@dataclass
class PollResult:
    """What one poll produced: the driver's samples (tagged) and the status point."""

    device: str
    samples: list[Sample]
    status: Sample
    error_class: str = ""
    error: str = ""
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.error_class

    @property
    def degraded(self) -> bool:
        """Up, but the device lacked some of what its driver reads (`missing`)."""
        return self.ok and bool(self.missing)

    def all_samples(self) -> list[Sample]:
        return [*self.samples, self.status]


@dataclass
class DevicePoller:
    """Polls one device; remembers its failures to back off from a device that keeps failing.

    Back-off: after n consecutive failures the next poll waits interval x 2^(n-1) beyond its
    normal schedule, capped at `max_backoff`; one success resets it.
    """

    device: Device
    driver: Driver
    max_backoff: float
    consecutive_failures: int = 0
    not_before: float = 0.0  # monotonic time before which scheduled polls are skipped
    schedule_origin: float | None = None  # wall-clock time of the first scheduled poll
    running: bool = field(default=False, init=False)

    @classmethod
    def create(cls, device: Device, max_backoff: float) -> DevicePoller:
        driver_cls = load_driver(device.config.driver)
        driver = driver_cls(device.config.name, device.options, device.config.timeout)
        return cls(device, driver, max_backoff)

    @property
    def name(self) -> str:
        return self.device.config.name

    def backoff(self) -> float:
        """Extra delay owed to consecutive failures."""
        if self.consecutive_failures == 0:
            return 0.0
        interval = self.device.config.interval
        return min(interval * 2 ** (self.consecutive_failures - 1), self.max_backoff)

    def due(self) -> bool:
        """False while the device is backing off or a poll of it is still running."""
        return not self.running and time.monotonic() >= self.not_before

    def start_lag(self, now: float) -> float:
        """How long after its scheduled time a poll starting at `now` (wall clock) starts: the
        scheduler's own delay plus the wait for a free slot of `concurrency`. APScheduler runs
        an interval job at origin + k x interval (a missed run is coalesced into the next), so
        the lag is the time past the last such tick; it is what a NOC watches to see a
        collector falling behind before polls are missed."""
        if self.schedule_origin is None:
            return 0.0
        return (now - self.schedule_origin) % self.device.config.interval

    async def poll(self) -> PollResult:
        """Poll once within the device's timeout; never raises (errors become the status)."""
        cfg = self.device.config
        lag = self.start_lag(time.time())
        self.running = True
        started = time.perf_counter()
        samples: list[Sample] = []
        error_class = error = ""
        busy = False
        missing: tuple[str, ...] = ()
        try:
            samples = await asyncio.wait_for(self.driver.poll(), timeout=cfg.timeout)
            if isinstance(samples, PartialPoll):
                missing = samples.missing
        except DeviceBusy as exc:  # the thread of a timed-out poll still holds the device
            error_class, error, busy = exc.kind, str(exc), True
        except PollError as exc:
            error_class, error = exc.kind, str(exc)
        except TimeoutError:
            error_class, error = "timeout", f"no complete answer within {cfg.timeout:g} s"
        except Exception as exc:  # a driver bug must not take the daemon down
            log.exception("driver %s crashed polling %s", cfg.driver, cfg.name)
            error_class, error = "internal", f"{type(exc).__name__}: {exc}"
        finally:
            self.running = False
        duration = time.perf_counter() - started

        if busy:  # no new failure: the timeout that left the thread running was counted
            log.info("%s: skipped: %s", cfg.name, error)
        elif error_class:
            self.consecutive_failures += 1
            log.warning("%s: poll failed (%s): %s", cfg.name, error_class, error)
        else:
            if missing:
                log.info("%s: degraded poll, the device lacks %s", cfg.name, ", ".join(missing))
            if self.consecutive_failures:
                log.info("%s: back up after %d failed polls", cfg.name, self.consecutive_failures)
            self.consecutive_failures = 0
        backoff = self.backoff()
        # Scheduled runs keep firing every interval; those before `not_before` are skipped, so
        # the next poll comes interval + backoff after this one (half an interval of slack
        # absorbs scheduling jitter).
        self.not_before = time.monotonic() + cfg.interval * 0.5 + backoff if backoff else 0.0

        tags = {"device": cfg.name, **cfg.tags}
        samples = [s.with_default_tags(tags) for s in samples]
        status = Sample(
            STATUS_MEASUREMENT,
            {**cfg.tags, "device": cfg.name, "driver": cfg.driver},
            {
                "up": not error_class,
                "degraded": bool(missing) and not error_class,
                "missing": ",".join(missing),
                "error_class": error_class,
                "error": error,
                "poll_duration_s": round(duration, 6),
                "start_lag_s": round(lag, 3),
                "samples": len(samples),
                "consecutive_failures": self.consecutive_failures,
                "backoff_s": backoff,
                "interval_s": cfg.interval,
            },
            now_ns(),
        )
        return PollResult(cfg.name, samples, status, error_class, error, missing)

    async def aclose(self) -> None:
        try:
            await self.driver.aclose()
        except Exception:
            log.exception("%s: closing the driver failed", self.name)

"""Simulated time: what the device models see as "now".

Why a clock of its own: a demo wants a week of maintenance windows and temperature cycles in
minutes (`AcceleratedClock`), and a test wants to jump to an exact simulated instant without
sleeping (`ManualClock`). Simulated time is seconds since the simulation started.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class SimClock(Protocol):
    """Source of simulated time, in seconds since the start of the simulation."""

    def now(self) -> float:
        """The current simulated time; never decreases."""
        ...


class AcceleratedClock:
    """Simulated time running `speed` times faster than the monotonic wall clock.

    It ticks in steps of `resolution` real seconds, so all the objects one SNMP request reads
    within a step describe the same simulated instant, however fast time runs.
    """

    def __init__(self, speed: float = 1.0, start: float = 0.0, resolution: float = 0.01):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._start = start
        self._resolution = resolution
        self._origin = time.monotonic()

    def now(self) -> float:
        steps = (time.monotonic() - self._origin) // self._resolution
        return self._start + steps * self._resolution * self.speed


class ManualClock:
    """Simulated time that only moves when told to (for tests); safe to move from any thread."""

    def __init__(self, start: float = 0.0):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def set(self, when: float) -> None:
        """Move to simulated time `when`; moving backwards is refused (counters never decrease)."""
        with self._lock:
            if when < self._now:
                raise ValueError(f"simulated time cannot go back from {self._now} to {when}")
            self._now = when

    def advance(self, seconds: float) -> None:
        """Move forward by `seconds` of simulated time."""
        self.set(self._now + seconds)

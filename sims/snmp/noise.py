"""Deterministic pseudo-random signals of simulated time.

Every signal is a pure function of (seed, stream, t): a model can be asked about any instant in
any order, two agents sharing a QKD link see the same values, and a given seed replays the same
day. Each signal has a known long-run mean, which is what lets the simulators hit the published
average key rates and QBERs exactly while still wandering, drifting and stepping.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread 64-bit integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def stream_id(*parts: object) -> int:
    """A stable 64-bit id for a named signal (Python's `hash` of a str varies per process)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def uniform(seed: int, stream: int, k: int) -> float:
    """The k-th draw of a stream, uniform in [0, 1)."""
    return _mix(_mix(_mix(seed & _MASK) ^ stream) ^ (k & _MASK)) / 2.0**64


@dataclass(frozen=True)
class Wiggle:
    """Smooth noise in [-1, 1] with long-run mean 0: random knots every `period` seconds."""

    seed: int
    stream: int
    period: float

    def __call__(self, t: float) -> float:
        x = t / self.period
        k = math.floor(x)
        f = x - k
        a = 2.0 * uniform(self.seed, self.stream, k) - 1.0
        b = 2.0 * uniform(self.seed, self.stream, k + 1) - 1.0
        return a + (b - a) * f * f * (3.0 - 2.0 * f)


@dataclass(frozen=True)
class Steps:
    """Piecewise-constant noise in [-1, 1] with long-run mean 0: a new level every `period` s."""

    seed: int
    stream: int
    period: float

    def __call__(self, t: float) -> float:
        return 2.0 * uniform(self.seed, self.stream, math.floor(t / self.period)) - 1.0


def hump_mean(sharpness: int) -> float:
    """Mean over time of max(0, sin)^sharpness: half the mean of |sin|^sharpness."""
    return (
        0.5 * math.gamma((sharpness + 1) / 2) / (math.sqrt(math.pi) * math.gamma(sharpness / 2 + 1))
    )


@dataclass(frozen=True)
class Excursion:
    """Recurring excursions >= 0 (e.g. an afternoon temperature swing) of varying height.

    One hump per `period`, at a seeded phase, shaped max(0, sin)^sharpness, its height scaled
    by 1 +/- 0.5 from a slow wiggle. `mean` is its exact long-run mean, so a model can use
    `value - mean` as a zero-mean disturbance.
    """

    seed: int
    stream: int
    period: float = 86_400.0
    sharpness: int = 2

    @property
    def mean(self) -> float:
        return hump_mean(self.sharpness)

    def __call__(self, t: float) -> float:
        phase = uniform(self.seed, self.stream, -1)
        hump = max(0.0, math.sin(2.0 * math.pi * (t / self.period + phase))) ** self.sharpness
        height = 1.0 + 0.5 * Wiggle(self.seed, self.stream ^ 0x5A5A, self.period / 3.0)(t)
        return hump * height

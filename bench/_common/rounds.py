"""Jobs run in rounds at bounded concurrency, timed: wall, the poller's CPU, the agents' CPU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from _common.snmp_agents import Agents

Job = Callable[[], Awaitable[str]]
"""One poll or scrape: "" when it went well, else what went wrong."""


@dataclass
class SideRun:
    """One side's timed rounds."""

    side: str
    version: str
    polls: int = 0
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    agents_cpu_s: list[float] = field(default_factory=list)  # per agent process
    requests_per_poll: float | None = None

    @property
    def ok(self) -> int:
        return self.polls - len(self.failures)

    @property
    def per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def per_cpu_s(self) -> float:
        return self.ok / self.cpu_s if self.cpu_s else float("nan")

    @property
    def agents_busy(self) -> float:
        """Busy fraction of the busiest agent process (near 100 %: agents set the pace)."""
        return max(self.agents_cpu_s, default=0.0) / self.wall_s if self.wall_s else 0.0


async def in_rounds(jobs: Sequence[Job], rounds: int, concurrency: int) -> list[str]:
    """Run every job once per round, at most `concurrency` at a time; return the failures."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(job: Job) -> None:
        async with gate:
            problem = await job()
            if problem:
                failures.append(problem)

    for _ in range(rounds):
        await asyncio.gather(*(one(job) for job in jobs))
    return failures


async def timed_rounds(
    run: SideRun,
    jobs: Sequence[Job],
    rounds: int,
    concurrency: int,
    agents: Agents,
    cpu_clock: Callable[[], float],
) -> None:
    """`in_rounds`, recording into `run` the wall time, the poller's CPU seconds as
    `cpu_clock` counts them, and each agent process's CPU seconds."""
    agents_before = agents.cpu()
    cpu = cpu_clock()
    wall = time.perf_counter()
    run.failures = await in_rounds(jobs, rounds, concurrency)
    run.wall_s = time.perf_counter() - wall
    run.cpu_s = cpu_clock() - cpu
    run.agents_cpu_s = [b - a for a, b in zip(agents_before, agents.cpu(), strict=True)]
    run.polls = rounds * len(jobs)

"""Where the CPU of a poll goes: the receive stage timed in real CPU time, then a cProfile
grouped by package (`snmp_polling.py --profile`)."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from _common.rounds import Job, in_rounds
from _common.udp_probes import UDP_TRANSPORT


@contextlib.contextmanager
def receive_clock() -> Iterator[dict[str, float]]:
    """CPU seconds (process_time, not inflated like cProfile's) spent receiving answers: asyncio
    reading each answer datagram and the client's protocol handling it up to the driver's
    future, under `"receive"`.

    Use inside the running loop, once the clients' sockets are open: the loop calls each UDP
    socket's reader as a bound method taken when the socket opened, so this wraps those
    handles of the running loop.
    """
    spent: dict[str, float] = defaultdict(float)

    def timed(function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent["receive"] += time.process_time() - started

        return wrapper

    readers = []
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    for key in selector.get_map().values():
        reader = key.data[0]
        if reader is not None and isinstance(
            getattr(reader._callback, "__self__", None), UDP_TRANSPORT
        ):
            readers.append((reader, reader._callback))
            reader._callback = timed(reader._callback)
    try:
        yield spent
    finally:
        for reader, callback in readers:
            reader._callback = callback


def profile_rounds(
    runner: asyncio.Runner, jobs: Sequence[Job], rounds: int, concurrency: int
) -> str:
    """Where the CPU of `rounds` more rounds of `jobs` goes: receiving answers against the rest
    in real CPU time, then a cProfile (own time by package, top functions by cumulative and by
    own time)."""
    polls = rounds * len(jobs)
    out = io.StringIO()

    spent: dict[str, float] = defaultdict(float)

    async def timed() -> float:
        await in_rounds(jobs, 1, concurrency)
        with receive_clock() as stages:
            started = time.process_time()
            await in_rounds(jobs, rounds, concurrency)
            total = time.process_time() - started
        spent.update(stages)
        return total

    total = runner.run(timed())
    out.write(f"-- CPU per poll by stage ({polls} polls, process_time) --\n")
    for label, seconds in (
        ("all", total),
        ("receive: datagram -> decoded answer", spent["receive"]),
        ("rest: driver, poller, asyncio, sends", total - spent["receive"]),
    ):
        out.write(f"{label:<46} {seconds / polls * 1e3:6.2f} ms {seconds / total:6.1%}\n")

    profiler = cProfile.Profile(time.process_time)  # CPU time: other processes do not count

    async def profiled() -> None:
        profiler.enable()
        await in_rounds(jobs, rounds, concurrency)
        profiler.disable()

    runner.run(profiled())
    stats = pstats.Stats(profiler, stream=out)
    out.write(
        f"\n{polls} polls under cProfile (CPU time); it inflates call-heavy code (pyasn1's) the"
        " most: read shares, not absolute times\n"
    )
    out.write("\n-- own time by package --\n")
    shares = own_time_by_package(stats)
    total = sum(shares.values())
    for package, seconds in sorted(shares.items(), key=lambda item: -item[1]):
        out.write(f"{package:<44} {seconds:7.2f} s {seconds / total:6.1%}\n")
    stats.strip_dirs()
    out.write("\n-- by cumulative time --\n")
    stats.sort_stats("cumulative").print_stats(35)
    out.write("\n-- by own time (tottime) --\n")
    stats.sort_stats("tottime").print_stats(35)
    return out.getvalue()


PACKAGES = (  # (path fragment, label), first match wins
    ("/pyasn1/codec/", "pyasn1 BER encoder/decoder"),
    ("/pyasn1/", "pyasn1 ASN.1 objects (create, clone, set)"),
    ("/pysnmp/proto/secmod/", "pysnmp USM (v3 security)"),
    ("/pysnmp/proto/", "pysnmp message processing"),
    ("/pysnmp/entity/", "pysnmp engine, cmdgen"),
    ("/pysnmp/carrier/", "pysnmp transport"),
    ("/pysnmp/", "pysnmp other"),
    ("/cryptography/", "cryptography (v3 AES)"),
    ("/Crypto", "pycryptodome (v3 AES)"),
    ("/collector/", "qkdtel collector (poller, samples)"),
    ("/asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
)


def own_time_by_package(stats: pstats.Stats) -> dict[str, float]:
    """Profiled own time (tottime) grouped by the package of each function."""
    shares: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~":  # C functions: name them by what they are
            label = "C: " + (
                "socket I/O"
                if "socket" in function
                else "epoll"
                if "poll" in function
                else "hashing/HMAC"
                if "hash" in function or "hmac" in function or "_hashlib" in function
                else "other builtins"
            )
        else:
            path = filename.replace(os.sep, "/")
            if "/drivers/" in path:  # the driver's files one by one: that is what to optimise
                label = "qkdtel drivers/" + path.rsplit("/drivers/", 1)[1]
            else:
                label = next((name for part, name in PACKAGES if part in path), "other Python")
        shares[label] += own
    return dict(shares)

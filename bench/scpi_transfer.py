"""Trace transfer through the SCPI layer beside a raw socket read of the same bytes.

    python bench/scpi_transfer.py [--points 50001] [--rounds 500] [--chunk-size N] [--profile]

Starts the simulated Yokogawa AQ6370 (`qkdtel sims osa`, link 4) in a child process, so the
server's CPU does not compete with the client's for one GIL, sweeps it once with `--points`
points, and then, in the same run and interleaved round by round, fetches the same trace
(`:TRACe:Y? TRA`, REAL,64: 8 bytes a point):

- **raw**: plain socket calls on the driver's own connection (the socket of its pyvisa-py
  session, between two of the driver's fetches): send the query, `recv_into` a preallocated
  buffer until the header, the declared payload and the terminator are in, decode with
  `np.frombuffer`: the floor cost of getting these bytes from this server on this connection;
- **binary**: `Job.query_block` of the driver layer (pyvisa + pyvisa-py TCPIP SOCKET): the
  query sent with the session's socket's `sendall`, header, payload and terminator received
  straight from that socket into one buffer, terminator check, decode;
- **fresh** and **control**: two connections of their own doing what **raw** does; fresh
  against control is raw against raw, the ratio that the machine and the kernel alone produce
  between two identical connections (A/A), and fresh against raw shows what the connection
  itself does.

The floor is read on the driver's own connection so that whatever the connection itself does
(its TCP state) counts alike on both sides; the fresh and control connections show whether it
does anything (see bench/README.md for the case that made this matter).
- **ascii**: `Job.query_values` of the same layer after `:FORMat:DATA ASCii` (the Anritsu
  class's only way), and the same ASCII message read raw, for scale.

Prints the median and best of each, MB/s, and the binary / raw ratio of medians (target:
<= 1.2x; exit status 1 when missed) and of bests, and the two connection ratios. 500 rounds by
default (after 20 untimed ones), the four paths interleaved in turn and each first in every
fourth round: with 200, the median still moved by ~0.1x from run to run.
`--profile` adds a cProfile of the binary path (own time of the top functions).
Not a unit test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from _common.procs import free_tcp_port, wait_listening

from qkdtel.drivers.scpi import Job
from qkdtel.drivers.scpi.socket_io import socket_session
from qkdtel.lab import OsaSession

QUERY = b":TRACe:Y? TRA\n"
WARMUP = 20


@contextmanager
def simulator(port: int) -> Iterator[str]:
    """The simulated AQ6370 of link 4 in a child process; its VISA resource name."""
    command = [sys.executable, "-m", "qkdtel.sims", "osa", "--dialect", "yokogawa"]
    command += ["--link", "4", "--base-port", str(port), "--sweep-time", "0.05"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(process, port, "the simulated OSA")
        yield f"TCPIP::127.0.0.1::{port}::SOCKET"
    finally:
        process.terminate()
        process.wait(timeout=10)


class RawReader:
    """The trace read over a plain socket: the floor for the same bytes from the same server."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray(16 * 1024 * 1024)

    @classmethod
    def connect(cls, port: int) -> RawReader:
        """A connection of its own, set up as the driver sets up its own."""
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def command(self, text: bytes) -> None:
        self.sock.sendall(text)

    def _fill(self, view: memoryview, have: int, need: int) -> int:
        while have < need:
            got = self.sock.recv_into(view[have:])
            if not got:
                raise ConnectionError("the simulator closed the connection")
            have += got
        return have

    def block(self) -> np.ndarray:
        self.sock.sendall(QUERY)
        view = memoryview(self.buffer)
        have = self._fill(view, 0, 2)
        digits = int(self.buffer[1:2])
        have = self._fill(view, have, 2 + digits)
        length = int(self.buffer[2 : 2 + digits])
        end = 2 + digits + length
        self._fill(view, have, end + 1)  # and the terminator
        return np.frombuffer(self.buffer, dtype="<f8", count=length // 8, offset=2 + digits)

    def text(self) -> int:
        """The ASCII answer up to its terminator; its size in bytes (not parsed: raw floor)."""
        self.sock.sendall(QUERY)
        view = memoryview(self.buffer)
        have = 0
        while True:
            got = self.sock.recv_into(view[have:])
            if not got:
                raise ConnectionError("the simulator closed the connection")
            have += got
            if self.buffer[have - 1] == 0x0A:
                return have

    def close(self) -> None:
        self.sock.close()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def report(name: str, times: list[float], nbytes: int) -> float:
    median = statistics.median(times)
    print(
        f"  {name:<24} median {median * 1e3:8.2f} ms  best {min(times) * 1e3:8.2f} ms  "
        f"{nbytes / median / 1e6:8.1f} MB/s"
    )
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50_001)
    parser.add_argument("--rounds", type=int, default=500, help="timed rounds (median, best)")
    parser.add_argument("--chunk-size", type=int, default=None, help="visa.chunk_size override")
    parser.add_argument("--profile", action="store_true", help="cProfile the binary path")
    args = parser.parse_args()

    port = free_tcp_port()
    with (
        simulator(port) as resource,
        OsaSession.open(resource, dialect="yokogawa") as osa,
    ):
        sweep = osa.sweep(start_nm=1528, stop_nm=1568, rbw_nm=0.02, points=args.points)
        expected = sweep.trace.power_dbm
        instrument = osa.instrument
        if args.chunk_size is not None:
            instrument.settings = instrument.settings.model_copy(
                update={"chunk_size": args.chunk_size}
            )
        fresh = RawReader.connect(port)
        control = RawReader.connect(port)
        binary_t: list[float] = []
        raw_t: list[float] = []
        fresh_t: list[float] = []
        control_t: list[float] = []
        ascii_t: list[float] = []
        raw_ascii_t: list[float] = []
        ascii_bytes = 0

        def driver_binary(job: Job) -> np.ndarray:
            return job.query_block("trace_y", "<f8", expected=args.points)

        def driver_ascii(job: Job) -> np.ndarray:
            return job.query_values("trace_y", expected=args.points)

        with instrument.job(600) as job:
            # the values must be the sweep's, bit for bit, on every path
            job.set("format_binary")
            direct = socket_session(job.resource)
            assert direct is not None, "the driver's pyvisa-py session has no socket to share"
            raw = RawReader(direct[0])
            fresh.command(b":FORMat:DATA REAL,64\n")
            control.command(b":FORMat:DATA REAL,64\n")
            assert np.array_equal(driver_binary(job), expected)
            assert np.array_equal(raw.block(), expected)
            assert np.array_equal(fresh.block(), expected)
            assert np.array_equal(control.block(), expected)
            paths: list[tuple[Callable[[], object], list[float]]] = [
                (lambda: driver_binary(job), binary_t),
                (raw.block, raw_t),
                (fresh.block, fresh_t),
                (control.block, control_t),
            ]
            for _ in range(WARMUP):  # untimed: caches, allocator, socket buffers
                for fetch, _times in paths:
                    fetch()
            assert not direct[1], "pyvisa-py holds bytes read ahead: the raw reads would miss them"
            # Interleaved, so that drift hits all alike, and each goes first in turn: the
            # first of a round finds the simulator just woken up.
            for round_ in range(args.rounds):
                turn = round_ % len(paths)
                for fetch, times in paths[turn:] + paths[:turn]:
                    times.append(timed(fetch))
            job.set("format_ascii")
            assert np.allclose(driver_ascii(job), expected, atol=5e-4)
            ascii_bytes = raw.text()
            for _ in range(max(3, args.rounds // 4)):
                ascii_t.append(timed(lambda: driver_ascii(job)))
                raw_ascii_t.append(timed(raw.text))
            profile_text = ""
            if args.profile:
                job.set("format_binary")
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.rounds):
                    driver_binary(job)
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
                profile_text = out.getvalue()
        fresh.close()
        control.close()

    nbytes = args.points * 8
    print(
        f"{args.points} points, REAL,64 block {nbytes} bytes, ASCII {ascii_bytes} bytes; "
        f"{args.rounds} rounds; chunk_size {instrument.settings.chunk_size}"
    )
    raw_m = report("raw, driver's connection", raw_t, nbytes)
    bin_m = report("driver binary block", binary_t, nbytes)
    fresh_m = report("raw, fresh connection", fresh_t, nbytes)
    control_m = report("raw, control connection", control_t, nbytes)
    raw_a = report("raw, driver's conn. (ASCII)", raw_ascii_t, ascii_bytes)
    asc_m = report("driver ASCII", ascii_t, ascii_bytes)
    ratio = bin_m / raw_m
    verdict = "met" if ratio <= 1.2 else "MISSED"
    best = min(binary_t) / min(raw_t)
    print(f"binary / raw: median {ratio:.2f}x, best {best:.2f}x (target <= 1.2x: {verdict})")
    print(
        f"fresh / control (A/A, what the machine alone does): median {fresh_m / control_m:.2f}x"
        f"; driver's connection / fresh (raw reads on both): median {raw_m / fresh_m:.2f}x"
    )
    print(
        f"ASCII / binary (driver): {asc_m / bin_m:.1f}x; driver ASCII / raw ASCII: "
        f"{asc_m / raw_a:.2f}x"
    )
    if profile_text:
        print(profile_text)
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())

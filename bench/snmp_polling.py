"""SNMP polling: qkdtel's qkd_snmp driver beside prometheus-snmp-exporter, same agents, same run.

    python bench/snmp_polling.py [--modules 28] [--rounds 40] [--concurrency 28]
                                 [--agent-procs N] [--no-v3] [--profile] [--snmp-yml FILE]

Starts the simulated QKD modules (`qkdtel sims up --only ...`) in `--agent-procs` child
processes (default: one per CPU, at least 2), so their CPU is counted against neither poller,
then measures in turn:

- qkdtel: `DevicePoller` + `QkdSnmpDriver` polling the N modules, at most `--concurrency`
  polls in flight, for `--rounds` rounds (a round polls every module once), in this process,
  CPU = `time.process_time()` around the rounds only (drivers built and two warm-up rounds
  done before: sockets, v3 discovery, table size learnt);
- exporter: Debian's `prometheus-snmp-exporter` with a generated snmp.yml (one module per
  profile: `get` of the scalars the driver reads, `walk` of the link table, whose every column
  the driver reads; OIDs resolved by name through pysnmp's MibBuilder; the driver's
  max-repetitions, timeout and retries), scraped at `/snmp?target=...&module=...` for the
  same modules, concurrency and rounds; CPU = utime + stime of the exporter process
  (/proc/<pid>/stat) over the rounds. A warm-up scrape of every module is checked against the
  driver's reading (same rows, same peers) before anything is counted, and every counted
  scrape must be HTTP 200 with the table's metrics in it.

Both in SNMPv2c, then both in SNMPv3 authPriv (SHA-256 + AES-128, the simulators' user).
Prints polls, wall seconds, polls/s, CPU seconds and polls per CPU-second of each, and the
ratios qkdtel/exporter. `--profile` adds, for extra qkdtel rounds run apart from the timed
ones, the real CPU per poll by stage (receive, pysnmp send, pyasn1 BER codec, rest) and a
cProfile (own time by package, top functions). Not a unit test: the figures depend on the
machine, and wall-clock polls/s on the agents and whatever else runs; compare CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from asyncio import selector_events
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml
from pyasn1.type import univ
from pysnmp.proto import rfc1902
from pysnmp.smi import view

from qkdtel.config import load_config_text
from qkdtel.drivers.qkd_snmp.profiles import PROFILES, Profile
from qkdtel.mibs import mib_builder
from qkdtel.poller import DevicePoller
from qkdtel.sims import collector_config
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.snmp.agent import Credentials
from qkdtel.sims.snmp.network import AgentInfo
from qkdtel.sims.topology import load_topology

EXPORTER = "/usr/bin/prometheus-snmp-exporter"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
VERSIONS = ("2c", "3")
MIN_EXPORTER_CPU_S = 0.5  # below this, /proc's clock ticks make the exporter's figure coarse

# Driver defaults (drivers/qkd_snmp/options.py), given to the exporter too.
REQUEST_TIMEOUT_S = 1
RETRIES = 1
MAX_REPETITIONS = 25


# ---- processes ---------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


@dataclass(frozen=True)
class Slot:
    """One polled module: a simulated module of the twin, in copy `copy` of it."""

    module: str
    profile: str
    copy: int

    @property
    def device(self) -> str:
        return self.module if self.copy == 0 else f"{self.module}-c{self.copy}"


def choose_slots(count: int) -> list[Slot]:
    """`count` modules of the MadQCI twin, the four families interleaved; copies beyond 28."""
    topology = load_topology()
    by_profile: dict[str, list[str]] = defaultdict(list)
    for module in topology.modules:
        by_profile[module.profile].append(module.name)
    order: list[tuple[str, str]] = []
    queues = [list(names) for names in by_profile.values()]
    profile_of = {m.name: m.profile for m in topology.modules}
    while any(queues):
        for queue in queues:
            if queue:
                name = queue.pop(0)
                order.append((name, profile_of[name]))
    return [Slot(*order[i % len(order)], copy=i // len(order)) for i in range(count)]


def split_slots(slots: Sequence[Slot], processes: int) -> list[list[Slot]]:
    """Spread the slots over agent processes; one process never hosts a module twice."""
    groups: list[list[Slot]] = [[] for _ in range(max(1, processes))]
    for slot in slots:
        fits = [g for g in groups if all(s.module != slot.module for s in g)]
        if not fits:
            fits = [[]]
            groups.append(fits[0])
        min(fits, key=len).append(slot)
    return [g for g in groups if g]


class Agents:
    """The simulated modules, served by `sims up` child processes."""

    def __init__(self, slots: Sequence[Slot], processes: int, work: Path):
        self.slots = list(slots)
        self.groups = split_slots(slots, processes)
        self.work = work
        self.sims: list[SimsProcess] = []
        self.entries: dict[str, dict[str, Any]] = {}  # device name -> v2c devices: entry

    def __enter__(self) -> Agents:
        try:
            for n, group in enumerate(self.groups):
                args = [arg for slot in group for arg in ("--only", slot.module)]
                sims = SimsProcess(self.work / f"sims-{n}.yaml", args).start()
                self.sims.append(sims)
                for slot in group:
                    entry = dict(sims.devices[slot.module], name=slot.device)
                    self.entries[slot.device] = entry
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for sims in self.sims:
            sims.stop()

    def cpu(self) -> list[float]:
        """CPU seconds of each agent process so far."""
        return [process_cpu(s.pid) for s in self.sims]

    def address(self, device: str) -> str:
        return self.entries[device]["address"]

    def device_entries(self, version: str) -> list[dict[str, Any]]:
        """The collector's `devices:` entries for every slot, in SNMP `version`."""
        out = []
        for slot in self.slots:
            entry = self.entries[slot.device]
            if version == "3":
                host, _, port = entry["address"].rpartition(":")
                info = AgentInfo(
                    name=slot.device,
                    host=host,
                    port=int(port),
                    profile=slot.profile,
                    site=entry["tags"]["node"],
                    domain=entry["tags"]["domain"],
                    credentials=Credentials(community=entry["snmp"]["community"]),
                )
                entry = collector_config.device_entry(info, v3=True)
            snmp = dict(
                entry["snmp"],
                request_timeout=REQUEST_TIMEOUT_S,
                retries=RETRIES,
                max_repetitions=MAX_REPETITIONS,
            )
            out.append(dict(entry, snmp=snmp, timeout=30))
        return out


# ---- measurements ------------------------------------------------------------------------------


@dataclass
class Run:
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


async def in_rounds(jobs: Sequence[Callable[[], Any]], rounds: int, concurrency: int) -> list[str]:
    """Run every job once per round, at most `concurrency` at a time; return the failures."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(job: Callable[[], Any]) -> None:
        async with gate:
            problem = await job()
            if problem:
                failures.append(problem)

    for _ in range(rounds):
        await asyncio.gather(*(one(job) for job in jobs))
    return failures


async def timed_rounds(
    run: Run,
    jobs: Sequence[Callable[[], Any]],
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


def poll_job(poller: DevicePoller) -> Callable[[], Any]:
    async def job() -> str:
        result = await poller.poll()
        return "" if result.ok else f"{result.device}: {result.error_class}: {result.error}"

    return job


# asyncio's UDP transport: whatever the driver builds its requests with, they leave here and
# its answers arrive here (private, but stable across CPython 3.11-3.13).
UDP_TRANSPORT = selector_events._SelectorDatagramTransport


@contextlib.contextmanager
def counting_datagrams() -> Iterator[list[int]]:
    """Count the UDP datagrams this process sends (the SNMP requests, during qkdtel rounds)."""
    counter = [0]
    original = UDP_TRANSPORT.sendto

    def counted(self: Any, data: Any, addr: Any = None) -> None:
        counter[0] += 1
        original(self, data, addr)

    UDP_TRANSPORT.sendto = counted  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        UDP_TRANSPORT.sendto = original  # type: ignore[method-assign]


def make_pollers(agents: Agents, version: str) -> list[DevicePoller]:
    document = {"devices": agents.device_entries(version)}
    loaded = load_config_text(yaml.safe_dump(document), f"<bench v{version}>")
    return [DevicePoller.create(device, max_backoff=60.0) for device in loaded.devices]


async def qkdtel_warm_up(pollers: Sequence[DevicePoller]) -> tuple[dict[str, Any], float]:
    """Two untimed rounds (engine, socket, v3 discovery, table size); the second counted.

    Returns the readings of the second round per device (for checking the exporter's) and
    the SNMP requests per poll it took.
    """
    for poller in pollers:
        result = await poller.poll()
        if not result.ok:
            raise SystemExit(f"qkdtel warm-up: {result.device}: {result.error}")
    readings: dict[str, Any] = {}
    with counting_datagrams() as sent:
        for poller in pollers:
            result = await poller.poll()
            if not result.ok:
                raise SystemExit(f"qkdtel warm-up: {result.device}: {result.error}")
            readings[result.device] = result.samples
    return readings, sent[0] / len(pollers)


def bench_qkdtel(
    runner: asyncio.Runner,
    pollers: Sequence[DevicePoller],
    agents: Agents,
    rounds: int,
    concurrency: int,
    version: str,
) -> tuple[Run, dict[str, Any]]:
    run = Run("qkdtel", version)

    async def measure() -> dict[str, Any]:
        readings, run.requests_per_poll = await qkdtel_warm_up(pollers)
        jobs = [poll_job(p) for p in pollers]
        await timed_rounds(run, jobs, rounds, concurrency, agents, time.process_time)
        return readings

    readings = runner.run(measure())
    return run, readings


@contextlib.contextmanager
def stage_clock() -> Iterator[dict[str, float]]:
    """CPU seconds (process_time, not inflated like cProfile's) by stage of a poll.

    Use inside the running loop, once the clients' sockets are open.

    - receive: asyncio reading one answer datagram and the client's protocol handling it up to
      the driver's future (a lean client), or pysnmp's message dispatcher doing so (version
      sniff, BER decode, USM, command generator, the driver's callback);
    - pysnmp_send: pysnmp's command generators building, securing, encoding and sending a
      request (zero when the client does not use them);
    - ber_decode / ber_encode: inside pyasn1's BER codec (zero when not used).
    """
    from pyasn1.codec.ber import decoder, encoder
    from pysnmp.entity.rfc3413 import cmdgen
    from pysnmp.proto.rfc3412 import MsgAndPduDispatcher

    spent: dict[str, float] = defaultdict(float)
    targets = [
        # pysnmp defers a datagram (call_soon) to its engine, which hands it to this
        (MsgAndPduDispatcher, "receive_message", "receive"),
        (cmdgen.GetCommandGenerator, "send_varbinds", "pysnmp_send"),
        (cmdgen.BulkCommandGeneratorSingleRun, "send_varbinds", "pysnmp_send"),
        (decoder, "decode", "ber_decode"),
        (encoder, "encode", "ber_encode"),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]

    def timed(function: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[stage] += time.process_time() - started

        return wrapper

    for (owner, name, stage), (_, _, function) in zip(targets, saved, strict=True):
        setattr(owner, name, timed(function, stage))
    # The loop calls each UDP socket's reader as a bound method taken when the socket opened:
    # wrap those handles of the running loop (call this inside it, the sockets open).
    readers = []
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    for key in selector.get_map().values():
        reader = key.data[0]
        if reader is not None and isinstance(
            getattr(reader._callback, "__self__", None), UDP_TRANSPORT
        ):
            readers.append((reader, reader._callback))
            reader._callback = timed(reader._callback, "receive")
    try:
        yield spent
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)
        for reader, callback in readers:
            reader._callback = callback


def profile_qkdtel(
    runner: asyncio.Runner, pollers: Sequence[DevicePoller], rounds: int, concurrency: int
) -> str:
    """Where the CPU of `rounds` more rounds goes: a stage split in real CPU time, then a
    cProfile (own time by package, top functions by cumulative and by own time)."""
    jobs = [poll_job(p) for p in pollers]
    polls = rounds * len(pollers)
    out = io.StringIO()

    spent: dict[str, float] = defaultdict(float)

    async def timed() -> float:
        await in_rounds(jobs, 1, concurrency)
        with stage_clock() as stages:
            started = time.process_time()
            await in_rounds(jobs, rounds, concurrency)
            total = time.process_time() - started
        spent.update(stages)
        return total

    total = runner.run(timed())
    rest = total - spent["receive"] - spent["pysnmp_send"]
    out.write(f"-- CPU per poll by stage ({polls} polls, process_time) --\n")
    for label, seconds in (
        ("all", total),
        ("receive: datagram -> decoded answer", spent["receive"]),
        ("  of which pyasn1 BER decode", spent["ber_decode"]),
        ("send: pysnmp command generator", spent["pysnmp_send"]),
        ("  of which pyasn1 BER encode", spent["ber_encode"]),
        ("rest: driver, poller, asyncio, other sends", rest),
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


async def close_pollers(pollers: Sequence[DevicePoller]) -> None:
    for poller in pollers:
        await poller.aclose()


# ---- prometheus-snmp-exporter ------------------------------------------------------------------


@dataclass(frozen=True)
class ExporterModule:
    """What the exporter module of one profile reads, and how to recognise its answer."""

    name: str
    config: dict[str, Any]
    first_column: str  # metric of the table's first column: present in every good scrape
    peer_column: str  # the column the driver turns into the `peer` tag
    scalars: tuple[str, ...]


def _dotted(oid: Sequence[int]) -> str:
    return ".".join(map(str, oid))


def _metric_type(syntax: Any) -> str:
    if isinstance(syntax, rfc1902.Counter64 | rfc1902.Counter32):
        return "counter"
    if isinstance(syntax, univ.OctetString):
        return "DisplayString"
    if isinstance(syntax, univ.Integer) and syntax.namedValues:
        return "EnumAsInfo"
    return "gauge"


def exporter_modules(version: str, credentials: Credentials) -> dict[str, ExporterModule]:
    """One snmp.yml module per profile, from the names the driver's profiles read.

    Objects are named by the profiles; OIDs, syntaxes and the table's INDEX come from the
    compiled MIBs through pysnmp (MibBuilder / MibViewController). Text columns the driver
    turns into tags become lookups (labels on every metric of the row), as a hand-written
    generator.yml would do.
    """
    builder = mib_builder()
    mib_view = view.MibViewController(builder)
    if version == "2c":
        params: dict[str, Any] = {"version": 2, "auth": {"community": credentials.community}}
    else:
        params = {
            "version": 3,
            "auth": {
                "security_level": "authPriv",
                "username": credentials.user,
                "password": credentials.auth_key,
                "auth_protocol": "SHA256",
                "priv_protocol": "AES",
                "priv_password": credentials.priv_key,
            },
        }
    params.update(max_repetitions=MAX_REPETITIONS, timeout=f"{REQUEST_TIMEOUT_S}s", retries=RETRIES)
    modules = {}
    for profile in PROFILES.values():
        modules[profile.name] = _exporter_module(builder, mib_view, profile, version, params)
    return modules


def _exporter_module(
    builder: Any, mib_view: Any, profile: Profile, version: str, params: dict[str, Any]
) -> ExporterModule:
    (table,) = builder.import_symbols(profile.mib, profile.table)
    mib, entry_name, _ = mib_view.get_node_location((*table.name, 1))
    (entry,) = builder.import_symbols(mib, entry_name)
    indexes = []
    for _, index_mib, index_name in entry.getIndexNames():
        (index,) = builder.import_symbols(index_mib, index_name)
        indexes.append({"labelname": index_name, "type": _metric_type(index.syntax)})
    index_labels = [i["labelname"] for i in indexes]

    tag_sources = [out.source for out in profile.columns if out.tag and isinstance(out.source, str)]
    columns = {name: builder.import_symbols(profile.mib, name)[0] for name in profile.column_names}
    lookups = [
        {
            "labels": index_labels,
            "labelname": name,
            "oid": _dotted(columns[name].name),
            "type": _metric_type(columns[name].syntax),
        }
        for name in dict.fromkeys(tag_sources)
        if _metric_type(columns[name].syntax) in ("DisplayString", "gauge")
    ]
    metrics = []
    for name in profile.scalar_names:
        (symbol,) = builder.import_symbols(profile.mib, name)
        metrics.append(_metric(name, symbol, []))
    for name, symbol in columns.items():
        metric = _metric(name, symbol, indexes)
        metric["lookups"] = [lookup for lookup in lookups if lookup["labelname"] != name]
        metrics.append(metric)
    scalar_oids = [
        _dotted((*builder.import_symbols(profile.mib, n)[0].name, 0)) for n in profile.scalar_names
    ]
    peer = next(out.source for out in profile.columns if out.name == "peer")
    return ExporterModule(
        name=f"{profile.name}_v{version}",
        config={
            "get": scalar_oids,
            "walk": [_dotted(table.name)],
            "metrics": metrics,
            **params,
        },
        first_column=profile.column_names[0],
        peer_column=str(peer),
        scalars=profile.scalar_names,
    )


def _metric(name: str, symbol: Any, indexes: list[dict[str, str]]) -> dict[str, Any]:
    kind = _metric_type(symbol.syntax)
    metric: dict[str, Any] = {
        "name": name,
        "oid": _dotted(symbol.name),
        "type": kind,
        "help": f"{name} (qkdtel bench)",
    }
    if indexes:
        metric["indexes"] = indexes
    if kind == "EnumAsInfo":
        metric["enum_values"] = {
            number: label for label, number in symbol.syntax.namedValues.items()
        }
    return metric


class _PlainDumper(yaml.SafeDumper):
    """Writes shared lists in full rather than as YAML anchors (a readable snmp.yml)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class HttpConnection:
    """A kept-alive HTTP/1.1 connection for GETs (Content-Length or chunked answers)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n"
        self._writer.write(request.encode())
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        else:
            parts = []
            while size := int((await self._reader.readline()).split(b";")[0], 16):
                parts.append(await self._reader.readexactly(size))
                await self._reader.readline()
            await self._reader.readline()
            body = b"".join(parts)
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Exporter:
    """prometheus-snmp-exporter on a free loopback port with the generated snmp.yml."""

    def __init__(self, binary: str, modules: Sequence[ExporterModule], work: Path):
        self.binary = binary
        self.config_path = work / "snmp.yml"
        # 0.21's snmp.yml is a map of module names (the `modules:` / `auths:` split is 0.23's)
        document = {m.name: m.config for m in modules}
        self.config_path.write_text(yaml.dump(document, Dumper=_PlainDumper, sort_keys=False))
        self.log_path = work / "snmp-exporter.log"
        self.port = free_tcp_port()
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Exporter:
        argv = [self.binary, f"--config.file={self.config_path}"]
        check = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"snmp.yml rejected by the exporter:\n{check.stdout}{check.stderr}")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*argv, f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return self
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise SystemExit(f"exporter did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def cpu(self) -> float:
        return process_cpu(self.pid)


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_PACKETS = re.compile(rb"^snmp_scrape_packets_sent (\S+)$", re.MULTILINE)


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = _SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            out.append((name, dict(_LABEL.findall(labels or "")), value))
    return out


def check_scrape(
    device: str, module: ExporterModule, body: bytes, qkdtel_samples: Sequence[Any]
) -> None:
    """The exporter read the same table as the driver: same rows, peers and scalars."""
    metrics = parse_metrics(body.decode())
    names = {name for name, _, _ in metrics}
    missing = [s for s in module.scalars if s not in names]
    if missing:
        raise SystemExit(f"exporter, {device}: no {', '.join(missing)} in\n{body[:2000]!r}")
    rows = {
        labels[module.peer_column]
        for name, labels, _ in metrics
        if name == module.first_column and module.peer_column in labels
    }
    links = [s for s in qkdtel_samples if s.measurement == "qkd_link"]
    expected = {s.tags["peer"] for s in links}
    if len(links) != sum(1 for name, _, _ in metrics if name == module.first_column):
        raise SystemExit(
            f"exporter, {device}: {module.first_column} rows differ from the driver's "
            f"{len(links)}:\n{body[:2000]!r}"
        )
    if rows != expected:
        raise SystemExit(f"exporter, {device}: peers {sorted(rows)}, driver: {sorted(expected)}")


def bench_exporter(
    exporter: Exporter,
    modules: dict[str, ExporterModule],
    agents: Agents,
    readings: dict[str, Any],
    rounds: int,
    concurrency: int,
    version: str,
) -> Run:
    run = Run("exporter", version)
    targets = []
    for slot in agents.slots:
        module = modules[slot.profile]
        query = urlencode({"target": agents.address(slot.device), "module": module.name})
        targets.append((slot.device, module, f"/snmp?{query}"))

    async def measure() -> None:
        pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
        for _ in range(concurrency):
            pool.put_nowait(HttpConnection("127.0.0.1", exporter.port))
        packets = 0.0
        for device, module, path in targets:  # warm-up and check, untimed
            connection = await pool.get()
            status, body = await connection.get(path)
            pool.put_nowait(connection)
            if status != 200:
                raise SystemExit(f"exporter, {device}: HTTP {status}: {body[:500]!r}")
            check_scrape(device, module, body, readings[device])
            packets += sum(float(v) for v in _PACKETS.findall(body))
        run.requests_per_poll = packets / len(targets)

        def job(device: str, module: ExporterModule, path: str) -> Callable[[], Any]:
            marker = f"\n{module.first_column}{{".encode()

            async def scrape() -> str:
                connection = await pool.get()
                try:
                    status, body = await connection.get(path)
                finally:
                    pool.put_nowait(connection)
                if status != 200 or marker not in body:
                    return f"{device}: HTTP {status}: {body[:200]!r}"
                return ""

            return scrape

        jobs = [job(*target) for target in targets]
        await timed_rounds(run, jobs, rounds, concurrency, agents, exporter.cpu)
        while not pool.empty():
            await pool.get_nowait().close()

    asyncio.run(measure())
    return run


# ---- report ------------------------------------------------------------------------------------


HEADER = (
    f"{'side':<14} {'polls':>6} {'failed':>6} {'wall s':>7} {'polls/s':>8} "
    f"{'CPU s':>7} {'polls/CPU-s':>11} {'req/poll':>8} {'agent max':>9}"
)


def report(runs: Sequence[Run]) -> str:
    lines = [HEADER]
    for run in runs:
        requests = "" if run.requests_per_poll is None else f"{run.requests_per_poll:.1f}"
        lines.append(
            f"{run.side + ' v' + run.version:<14} {run.polls:>6} {len(run.failures):>6} "
            f"{run.wall_s:>7.2f} {run.per_s:>8.0f} {run.cpu_s:>7.2f} {run.per_cpu_s:>11.0f} "
            f"{requests:>8} {run.agents_busy:>9.0%}"
        )
    by_key = {(r.side, r.version): r for r in runs}
    for version in VERSIONS:
        ours, theirs = by_key.get(("qkdtel", version)), by_key.get(("exporter", version))
        if ours and theirs:
            lines.append(
                f"ratio qkdtel/exporter v{version}: polls/s {ours.per_s / theirs.per_s:.2f}x, "
                f"polls per CPU-s {ours.per_cpu_s / theirs.per_cpu_s:.2f}x (target 1.00x)"
            )
    coarse = [r for r in runs if r.side == "exporter" and r.cpu_s < MIN_EXPORTER_CPU_S]
    if coarse:
        lines.append(
            f"warning: the exporter's CPU comes in {1000 / CLOCK_TICK:g} ms clock ticks and it"
            f" used under {MIN_EXPORTER_CPU_S:g} s: its polls per CPU-s are coarse; raise --rounds"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modules", type=int, default=28, help="modules polled (28: the twin)")
    parser.add_argument("--rounds", type=int, default=40, help="timed polls of every module")
    parser.add_argument("--concurrency", type=int, default=28, help="polls in flight at most")
    parser.add_argument(
        "--agent-procs",
        type=int,
        default=max(2, os.cpu_count() or 2),
        help="child processes serving the simulated agents",
    )
    parser.add_argument("--no-v3", action="store_true", help="SNMPv2c only")
    parser.add_argument("--profile", action="store_true", help="cProfile the qkdtel side too")
    parser.add_argument("--exporter", default=EXPORTER, help="prometheus-snmp-exporter binary")
    parser.add_argument("--snmp-yml", type=Path, help="also save the generated snmp.yml here")
    args = parser.parse_args()
    if shutil.which(args.exporter) is None:
        raise SystemExit(f"{args.exporter} not found (apt-get install prometheus-snmp-exporter)")

    versions = VERSIONS[:1] if args.no_v3 else VERSIONS
    slots = choose_slots(args.modules)
    runs: list[Run] = []
    profiles: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="qkdtel-bench-snmp-") as tmp:
        work = Path(tmp)
        with Agents(slots, args.agent_procs, work) as agents:
            first = next(iter(agents.entries.values()))
            credentials = Credentials(community=first["snmp"]["community"])
            modules = {v: exporter_modules(v, credentials) for v in versions}
            all_modules = [m for by_profile in modules.values() for m in by_profile.values()]
            with Exporter(args.exporter, all_modules, work) as exporter:
                if args.snmp_yml:
                    shutil.copyfile(exporter.config_path, args.snmp_yml)
                families = defaultdict(int)
                for slot in slots:
                    families[slot.profile] += 1
                print(
                    f"{len(slots)} modules ({', '.join(f'{n} {p}' for p, n in families.items())})"
                    f" in {len(agents.groups)} agent processes; {args.rounds} rounds, "
                    f"concurrency {args.concurrency}; exporter pid {exporter.pid}",
                    flush=True,
                )
                print(HEADER, flush=True)
                for version in versions:
                    pollers = make_pollers(agents, version)
                    runner = asyncio.Runner()
                    try:
                        run, readings = bench_qkdtel(
                            runner, pollers, agents, args.rounds, args.concurrency, version
                        )
                        runs.append(run)
                        print(report([run]).splitlines()[1], flush=True)
                        runs.append(
                            bench_exporter(
                                exporter,
                                modules[version],
                                agents,
                                readings,
                                args.rounds,
                                args.concurrency,
                                version,
                            )
                        )
                        print(report(runs[-1:]).splitlines()[1], flush=True)
                        if args.profile:
                            text = profile_qkdtel(runner, pollers, args.rounds, args.concurrency)
                            profiles.append((version, text))
                    finally:
                        runner.run(close_pollers(pollers))
                        runner.close()
    print()
    print(report(runs))
    print(
        "req/poll: SNMP requests per poll (qkdtel: UDP datagrams it sent in its warm-up round;"
        " exporter: its snmp_scrape_packets_sent); agent max: CPU busy of the busiest agent process"
    )
    for run in runs:
        for failure in run.failures[:5]:
            print(f"  {run.side} v{run.version} failed: {failure}")
    for version, text in profiles:
        print(f"\n==== cProfile, qkdtel v{version} ====\n{text}")
    if any(run.failures for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()

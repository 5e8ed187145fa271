"""Cheap SNMPv2c agents for the capacity bench: answers recorded once from the real simulators,
replayed by request-id from processes of their own.

A Python simulator spends far more CPU per answer than the collector spends per request, so
10,000 simulated modules would starve the collector on two cores. Instead:

1. `record()` polls each module of the MadQCI twin once through a recording proxy in front of
   `qkdtel sims up` (real driver, real agents): every request, its request-id taken out, maps to
   the answer's PDU after its request-id;
2. `Responder` processes answer from that table: parse the request's community and request-id,
   look the rest up, put the request-id back, send. The community names the module whose
   answers a device gets (`device_entry`), so any number of devices share a few UDP ports.

SNMPv3 (authPriv) devices get the same answers through an agent's USM layer around the table
(`replay_v3`): the scoped PDU is what a v2c answer's PDU is, only sealed per request.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from _common.procs import process_cpu
from _common.replay_v3 import serve_v3, snmp_settings
from _common.snmp_agents import Agents, choose_slots
from qkdtel.drivers.qkd_snmp.ber import GET, BerError, _header, _integer, _tlv

RECORDED_POLLS = 3
"""Polls recorded of each module: the first, and two that ask for the table size it learnt."""
QUIET_S = 8.0

Key = tuple[bytes, int, bytes]
"""(community, PDU tag, the PDU after its request-id): a request with its request-id left out."""

Table = dict[Key, tuple[int, bytes]]
"""Request key -> (answer PDU tag, the answer PDU after its request-id)."""


def split(message: bytes) -> tuple[bytes, int, int, bytes]:
    """(community, PDU tag, request-id, PDU after the request-id) of a v2c message."""
    _, start, end = _header(message, 0, len(message))
    _, _, v_end = _header(message, start, end)  # version
    _, c_start, c_end = _header(message, v_end, end)
    tag, p_start, p_end = _header(message, c_end, end)
    _, r_start, r_end = _header(message, p_start, p_end)
    request_id = int.from_bytes(message[r_start:r_end], "big", signed=True)
    return message[c_start:c_end], tag, request_id, message[r_end:p_end]


def answer(community: bytes, request_id: int, tag: int, rest: bytes) -> bytes:
    """A v2c message (version 2c) carrying `community` and the PDU `tag` with `request_id`."""
    return _tlv(0x30, _integer(1) + _tlv(0x04, community) + _tlv(tag, _integer(request_id) + rest))


class _RecordingProxy(threading.Thread):
    """One loopback UDP port per module in front of its agent; records every exchange."""

    def __init__(self, upstream: dict[str, tuple[str, int]]):
        super().__init__(daemon=True)
        self.table: Table = {}
        self.gets: Counter[str] = Counter()
        """Module -> GET requests answered: one per poll (each poll starts with its GET)."""
        self.grew = time.monotonic()
        """When the table last got a new exchange."""
        self.ports: dict[str, int] = {}
        self._selector = selectors.DefaultSelector()
        self._done = threading.Event()
        for module, address in upstream.items():
            front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            front.bind(("127.0.0.1", 0))
            back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            back.connect(address)
            back.settimeout(2.0)
            self.ports[module] = front.getsockname()[1]
            self._selector.register(front, selectors.EVENT_READ, (module, back))

    def run(self) -> None:
        while not self._done.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                module, back = key.data
                request, client = key.fileobj.recvfrom(65535)
                back.send(request)
                with contextlib.suppress(TimeoutError):
                    reply = back.recv(65535)
                    self._record(module, request, reply)
                    key.fileobj.sendto(reply, client)

    def _record(self, module: str, request: bytes, reply: bytes) -> None:
        _, tag, _, rest = split(request)
        _, reply_tag, _, reply_rest = split(reply)
        key = module.encode(), tag, rest
        if key not in self.table:
            self.table[key] = (reply_tag, reply_rest)
            self.grew = time.monotonic()
        self.gets[module] += tag == GET

    def close(self) -> None:
        self._done.set()
        self.join()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
            key.data[1].close()


def record(work: Path, timeout: float = 180.0) -> tuple[Table, dict[str, dict[str, Any]]]:
    """Run the real daemon (`qkdtel run`, every module every 2 s) through the proxy until
    every module has answered RECORDED_POLLS polls and no new exchange came for QUIET_S: a
    first poll and the later ones, which ask for the table size the first learnt (a fixed 5 s
    missed some modules' later polls on a busy machine). The answer table, and each module's
    v2c `devices:` entry as polled."""
    slots = choose_slots(28)
    with Agents(slots, 1, work) as agents:
        entries = {e["name"]: e for e in agents.device_entries("2c")}
        upstream = {}
        for name, entry in entries.items():
            host, _, port = entry["address"].rpartition(":")
            upstream[name] = (host, int(port))
        proxy = _RecordingProxy(upstream)
        proxy.start()
        try:
            # The proxy answers one request at a time and the simulators are slow on a busy
            # machine: a long timeout, so that polls complete instead of backing off.
            devices = [
                dict(
                    entry,
                    address=f"127.0.0.1:{proxy.ports[name]}",
                    interval=2.0,
                    timeout=30.0,
                    snmp=dict(entry["snmp"], request_timeout=5.0),
                )
                for name, entry in entries.items()
            ]
            config = work / "record.yaml"
            document = {"collector": {"spool_dir": str(work / "record" / "spool")}}
            config.write_text(yaml.safe_dump({**document, "devices": devices}))
            with (work / "record.log").open("w") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(config)],
                    stdout=log,
                    stderr=log,
                )
                try:
                    _until_recorded(proxy, list(entries), daemon, timeout)
                finally:
                    daemon.send_signal(signal.SIGTERM)
                    daemon.wait(60)
        finally:
            proxy.close()
    return proxy.table, entries


def _until_recorded(
    proxy: _RecordingProxy, modules: list[str], daemon: subprocess.Popen, timeout: float
) -> None:
    """Wait until every module answered RECORDED_POLLS polls and the table has not grown for
    QUIET_S (a poll that timed out through the proxy on a busy machine is asked again in
    another shape); SystemExit after `timeout`."""
    deadline = time.monotonic() + timeout
    while (
        min(proxy.gets[m] for m in modules) < RECORDED_POLLS
        or time.monotonic() - proxy.grew < QUIET_S
    ):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"recording: not every module polled {RECORDED_POLLS} times")
        time.sleep(0.5)


def device_entry(
    name: str, module_entry: dict[str, Any], port: int, version: str = "2c"
) -> dict[str, Any]:
    """A device answered by a responder on `port` with the answers recorded from `module`
    (v2c: the community names the module; v3: the USM user does)."""
    if version == "3":
        other = {k: v for k, v in module_entry["snmp"].items() if k not in ("version", "community")}
        snmp = {**other, **snmp_settings(module_entry["name"])}
    else:
        snmp = dict(module_entry["snmp"], community=module_entry["name"])
    return dict(module_entry, name=name, address=f"127.0.0.1:{port}", snmp=snmp)


def _serve(sock: socket.socket, table: Table, missed: Any) -> None:
    """A responder's loop: answer what the table knows; count (and drop) what it does not."""
    while True:
        request, client = sock.recvfrom(65535)
        try:
            community, tag, request_id, rest = split(request)
            reply_tag, reply_rest = table[community, tag, rest]
        except (BerError, KeyError, ValueError):
            with missed.get_lock():
                missed.value += 1
            continue
        sock.sendto(answer(community, request_id, reply_tag, reply_rest), client)


class Responders:
    """`count` responder processes, each on its own loopback UDP port (`version` 2c or 3)."""

    def __init__(self, table: Table, count: int, version: str = "2c"):
        self.table = table
        self.count = count
        self.serve = serve_v3 if version == "3" else _serve
        self.ports: list[int] = []
        self.missed = multiprocessing.Value("q", 0)
        self._procs: list[multiprocessing.Process] = []

    def __enter__(self) -> Responders:
        context = multiprocessing.get_context("fork")
        for _ in range(self.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(("127.0.0.1", 0))
            self.ports.append(sock.getsockname()[1])
            proc = context.Process(
                target=self.serve, args=(sock, self.table, self.missed), daemon=True
            )
            proc.start()
            sock.close()  # the child has it
            self._procs.append(proc)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.terminate()
            proc.join(5)

    def cpu(self) -> float:
        """CPU seconds of every responder so far, together."""
        return sum(process_cpu(p.pid) for p in self._procs if p.pid is not None)


def assign(
    count: int, modules: Sequence[str], ports: Sequence[int]
) -> Iterator[tuple[str, str, int]]:
    """(device name, recorded module, responder port) for `count` devices, spread evenly."""
    for i in range(count):
        yield f"dev-{i:05d}", modules[i % len(modules)], ports[i % len(ports)]

"""The SNMP layer attacked as from loopback: forged, replayed and flooded datagrams.

Trap receiver: real notifications from Net-SNMP's `snmptrap`, and datagrams captured from it
(a UDP socket of the test's own stands in for the receiver) then replayed or altered byte-wise.
Polling clients: a relay in front of a simulated agent stands where an on-path attacker would;
what it injects reaches the client from the agent's address, as spoofed datagrams would.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from qkdtel.drivers.qkd_snmp import QkdSnmpDriver
from qkdtel.drivers.qkd_snmp.ber import (
    REPORT,
    decode_v3,
    encode_pdu,
    encode_scoped_pdu,
    encode_usm_parameters,
    encode_v3,
)
from qkdtel.drivers.qkd_snmp.usm import MAX_BOOTS
from qkdtel.sdk import PollError
from qkdtel.sims.snmp.agent import engine_id
from tests.fixtures_hil import driver_options
from tests.test_traps import QUEVEDO, SENDER_ENGINE, V3, Harness, oid, run, varbinds

needs_netsnmp = pytest.mark.usefixtures("netsnmp_tools")

USM_UNKNOWN_ENGINE_IDS = (1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0)
EVIL_ENGINE = b"\x80\x00\x1f\x88\x04evil-engine"


# ---- trap receiver ----------------------------------------------------------------------------


def v3_args(level: str, user: str = "trapper", engine: str = SENDER_ENGINE) -> list[str]:
    """snmptrap arguments for the `V3` user's keys at a given security level."""
    args = ["-v3", "-u", user, "-l", level, "-e", engine]
    if level != "noAuthNoPriv":
        args += ["-a", "SHA-256", "-A", "trap-auth-key"]
    if level == "authPriv":
        args += ["-x", "AES", "-X", "trap-priv-key"]
    return args


def link_down(target: str) -> list[str]:
    """snmptrap arguments after the security ones: a Cerberis link-down notification."""
    carried = varbinds("cerberis3", {"cerbLinkState": ("i", "5")})
    return [target, "", oid("cerberis3", "cerbLinkDown"), *carried]


def capture(*args: str) -> bytes:
    """The datagram `snmptrap args...` sends, caught by a socket of our own."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(5)
        target = f"127.0.0.1:{sink.getsockname()[1]}"
        subprocess.run(
            ["snmptrap", "-M", "/dev/null", "-r", "0", *args, *link_down(target)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return sink.recv(65535)


def handled(h: Harness) -> int:
    """Datagrams the receiver has decided on (accepted or refused)."""
    return h.receiver.accepted + sum(h.receiver.refused.values())


def batches(datagrams: list[bytes], size: int = 50, octets: int = 64 * 1024) -> list[list[bytes]]:
    """Datagrams in batches that fit a default socket receive buffer."""
    out: list[list[bytes]] = [[]]
    for datagram in datagrams:
        if len(out[-1]) >= size or sum(map(len, out[-1])) + len(datagram) > octets:
            out.append([])
        out[-1].append(datagram)
    return [batch for batch in out if batch]


async def blast(h: Harness, datagrams: list[bytes], source: str = "127.0.0.1") -> None:
    """Send datagrams to the receiver from `source`, in batches it can keep up with."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setblocking(False)
        for batch in batches(datagrams):
            expected = handled(h) + len(batch)
            for datagram in batch:
                sock.sendto(datagram, h.receiver.address)
            deadline = time.monotonic() + 10
            while handled(h) < expected:
                assert time.monotonic() < deadline, "the receiver stopped handling datagrams"
                await asyncio.sleep(0.001)


@needs_netsnmp
def test_v3_trap_below_the_users_security_level_is_refused():
    async def test(h: Harness) -> None:
        for level in ("noAuthNoPriv", "authNoPriv"):
            assert await h.send(*v3_args(level), *link_down(h.target)) == 0
        assert await h.nothing()
        assert h.receiver.refused["below_level"] == 2
        assert await h.send(*v3_args("authPriv"), *link_down(h.target)) == 0
        assert (await h.next()).tags["event"] == "link_down"

    run(test, QUEVEDO, users=[V3])


@needs_netsnmp
def test_learnt_engine_id_is_bound_to_the_device_address():
    async def test(h: Harness) -> None:
        await h.send(*v3_args("authPriv"), *link_down(h.target))
        assert (await h.next()).tags["device"] == "quevedo-idq"  # learnt from 127.0.0.1
        await h.send(*v3_args("authPriv"), *link_down(h.target), client="127.0.0.2")
        other = v3_args("authPriv", engine="0x80001f8880beefbeef01")
        await h.send(*other, *link_down(h.target), client="127.0.0.2")
        assert await h.nothing()
        assert h.receiver.refused["wrong_address"] == 1
        assert h.receiver.refused["unknown_engine"] == 1

    run(test, QUEVEDO, users=[V3])


@needs_netsnmp
def test_a_captured_trap_replayed_three_times_is_one_event():
    datagram = capture(*v3_args("authPriv"))

    async def test(h: Harness) -> None:
        await blast(h, [datagram] * 3)
        assert (await h.next()).tags["event"] == "link_down"
        assert await h.nothing()
        assert h.receiver.refused["duplicate"] == 2

    run(test, QUEVEDO, users=[V3])


@needs_netsnmp
def test_traps_from_an_older_boot_or_outside_the_time_window_are_refused():
    async def send(h: Harness, boots: int, engine_time: int) -> None:
        args = [*v3_args("authPriv"), "-Z", f"{boots},{engine_time}", *link_down(h.target)]
        assert await h.send(*args) == 0

    async def test(h: Harness) -> None:
        await send(h, 5, 1000)
        await h.next()
        await send(h, 4, 5000)  # an older boot
        await send(h, 5, 800)  # 200 s behind the engine's clock as last seen
        await send(h, MAX_BOOTS, 0)  # latched: RFC 3414 takes nothing from such an engine
        assert await h.nothing()
        assert h.receiver.refused["not_in_time_window"] == 3
        await send(h, 5, 900)  # within 150 s
        await send(h, 6, 1)  # a reboot
        assert [(await h.next()).tags["event"] for _ in range(2)] == ["link_down"] * 2

    run(test, QUEVEDO, users=[V3])


@needs_netsnmp
def test_forged_engine_ids_cost_no_memory_and_little_time():
    """3,000 copies of an authentic trap, each with another engine ID, from the device's own
    address: none can be authentic (the key is localised to the engine ID), none is kept."""
    original = capture(*v3_args("authPriv"))
    engine = bytes.fromhex(SENDER_ENGINE[2:])
    forged = [original.replace(engine, os.urandom(len(engine)), 1) for _ in range(3000)]

    async def test(h: Harness) -> None:
        await blast(h, forged[:100])  # warm-up: first-use allocations are no growth
        tracemalloc.start()
        try:
            started = time.process_time()
            before = tracemalloc.get_traced_memory()[0]
            await blast(h, forged[100:])
            grown = tracemalloc.get_traced_memory()[0] - before
            cpu = time.process_time() - started
        finally:
            tracemalloc.stop()
        assert h.receiver.refused["wrong_digest"] == 3000
        assert grown < 512 * 1024, grown
        assert cpu / 2900 < 0.002, cpu  # per datagram, tracing included
        await h.send(*v3_args("authPriv"), *link_down(h.target))  # the real one still works
        assert (await h.next()).tags["event"] == "link_down"

    run(test, QUEVEDO, users=[V3])


@needs_netsnmp
def test_engines_of_a_no_auth_user_are_kept_in_a_bounded_table(monkeypatch):
    """Unauthenticated traps prove nothing: a noAuthNoPriv user's engines are learnt from a
    device's address, at most `MAX_ENGINES` of them, least recently used forgotten first, and
    never at the expense of an authenticated engine and its clock (its replay protection)."""
    # A smaller table than the default 256 only to keep the test short: registering an engine
    # with pysnmp costs ~12 ms, the same code path whatever the bound.
    monkeypatch.setattr("qkdtel.drivers.qkd_snmp.traps.MAX_ENGINES", 24)
    plain = {"user": "plain"}
    original = capture(*v3_args("noAuthNoPriv", user="plain"))
    engine = bytes.fromhex(SENDER_ENGINE[2:])
    count = 24 + 100
    forged = [original.replace(engine, os.urandom(len(engine)), 1) for _ in range(count)]

    async def authentic(h: Harness, boots: int) -> None:
        args = [*v3_args("authPriv"), "-Z", f"{boots},1000", *link_down(h.target)]
        assert await h.send(*args) == 0

    async def test(h: Harness) -> None:
        await authentic(h, 5)
        await h.next()
        await blast(h, forged)
        for _ in range(count):
            await h.next()
        assert h.receiver.accepted == count + 1
        assert h.receiver.evicted == 100
        await authentic(h, 4)  # an older boot: still known as such
        assert await h.nothing()
        assert h.receiver.refused["not_in_time_window"] == 1

    run(test, QUEVEDO, users=[V3, plain])


# ---- polling clients --------------------------------------------------------------------------


class Attacker(asyncio.DatagramProtocol):
    """A relay between client and agent that also speaks for the agent: before forwarding a
    request it sends the client whatever `forge(request)` returns, it can stop forwarding
    (the agent unreachable while the attack goes on) or alter answers (`transform`)."""

    def __init__(self, agent: tuple[str, int]):
        self.agent = agent
        self.forge: Callable[[bytes], list[bytes]] = lambda request: []
        self.forward = True
        self.transform: Callable[[bytes], bytes] = lambda answer: answer
        self.requests: list[bytes] = []
        self.client: tuple[str, int] | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple) -> None:
                if relay.forward and relay.front is not None:
                    relay.front.sendto(relay.transform(data), relay.client)

        self.back, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.agent)
        return f"127.0.0.1:{self.front.get_extra_info('sockname')[1]}"

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        assert self.front is not None and self.back is not None
        self.client = addr
        self.requests.append(data)
        for forged in self.forge(data):
            self.front.sendto(forged, addr)
        if self.forward:
            self.back.sendto(data)

    def close(self) -> None:
        for transport in (self.front, self.back):
            if transport is not None:
                transport.close()


def attacked(sim: Any, body: Callable, **snmp: Any) -> Any:
    """Run `body(driver, attacker)` with the driver polling `sim` through an `Attacker`."""

    async def main() -> Any:
        attacker = Attacker((sim.host, sim.port))
        address = await attacker.start()
        entry = {**sim.device, "address": address}
        entry["snmp"] = {**entry["snmp"], "request_timeout": 0.3, "retries": 1, **snmp}
        driver = QkdSnmpDriver(entry["name"], driver_options(entry), timeout=10.0)
        try:
            return await body(driver, attacker)
        finally:
            await driver.aclose()
            attacker.close()

    return asyncio.run(main())


def forged_report(request: bytes, boots: int = 1, engine_time: int = 1) -> bytes:
    """An unauthenticated usmStatsUnknownEngineIDs report for a sniffed request's msgID."""
    msg_id = decode_v3(request).msg_id
    usm = encode_usm_parameters(EVIL_ENGINE, boots, engine_time, b"", b"", b"")
    pdu = encode_pdu(REPORT, msg_id, [USM_UNKNOWN_ENGINE_IDS])
    return encode_v3(msg_id, 65507, 0, usm, encode_scoped_pdu(EVIL_ENGINE, b"", pdu))


def is_discovery(request: bytes) -> bool:
    return decode_v3(request).engine_id == b""


JUNK = [b"\x00", b"\x30\x03\x02\x01", b"\xff" * 64, b"\x30\x82\xff\xff" + b"\x00" * 32]


@pytest.mark.parametrize("version", ["2c", "3"])
def test_junk_from_the_agents_address_is_ignored_and_counted(single_agent, version):
    sim = single_agent("cerberis3", version=version)

    async def body(driver: QkdSnmpDriver, attacker: Attacker) -> tuple[dict[str, int], int]:
        attacker.forge = lambda request: JUNK
        for _ in range(2):
            assert await driver.poll()  # every request met junk first, none failed
        return driver._client.ignored, len(attacker.requests)

    ignored, requests = attacked(sim, body)
    assert ignored["undecodable"] == requests * len(JUNK), (ignored, requests)


def test_forged_unknown_engine_report_does_not_make_the_client_forget_the_engine(single_agent):
    sim = single_agent("cerberis3", version="3")

    async def body(driver: QkdSnmpDriver, attacker: Attacker) -> tuple[int, dict]:
        attacker.forge = lambda request: [] if is_discovery(request) else [forged_report(request)]
        for _ in range(3):
            assert await driver.poll()
        return sum(map(is_discovery, attacker.requests)), driver._client.ignored

    discoveries, ignored = attacked(sim, body)
    assert discoveries == 1
    assert ignored["unauthenticated"] >= 6


@pytest.mark.parametrize(
    ("boots", "engine_time"), [(MAX_BOOTS, 5), (-1, 5), (3, -7)], ids=["latched", "neg", "neg-t"]
)
def test_discovery_answer_outside_rfc_3414_bounds_is_not_taken(single_agent, boots, engine_time):
    sim = single_agent("cerberis3", version="3")

    async def body(driver: QkdSnmpDriver, attacker: Attacker) -> tuple[Any, dict]:
        def forge(request: bytes) -> list[bytes]:
            return [forged_report(request, boots, engine_time)] if is_discovery(request) else []

        attacker.forge = forge
        assert await driver.poll()
        peer = driver._client._peer
        return (peer.engine_id, peer.boots), driver._client.ignored

    (engine, boots_taken), ignored = attacked(sim, body)
    assert engine == engine_id(sim.agent.name) and 0 <= boots_taken < MAX_BOOTS
    assert ignored["bad_discovery"] == 1


@pytest.mark.parametrize("version", ["2c", "3"])
def test_polling_heals_by_itself_once_the_attack_stops(single_agent, version):
    """While the attacker cuts the agent off and answers every request with forged reports
    and junk, polls fail as poll errors; the first poll after it stops succeeds."""
    sim = single_agent("cerberis3", version=version)

    async def body(driver: QkdSnmpDriver, attacker: Attacker) -> list[str]:
        outcomes = []
        assert await driver.poll()
        attacker.forward = False
        attacker.forge = lambda request: [*JUNK, forged_report(request)] if version == "3" else JUNK
        for _ in range(2):
            try:
                await driver.poll()
                outcomes.append("ok")
            except PollError as exc:
                outcomes.append(exc.kind)
        attacker.forward, attacker.forge = True, lambda request: []
        assert await driver.poll()
        return outcomes

    outcomes = attacked(sim, body)
    assert all(kind in ("timeout", "auth") for kind in outcomes), outcomes

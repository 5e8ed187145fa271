"""Fuzzing the SNMP layer with a fixed budget: mutated real messages against the BER decoder,
the profile conversions, both polling clients (answers mutated on their way from a simulated
agent) and the trap receiver (mutated captures of Net-SNMP's snmptrap).

Asserted: only PollError-class outcomes (BerError inside the decoder), nothing escaping into
the event loop's exception handler, decoder work linear in each message's size (counted in
lines executed, not timed) and bounded memory. The budget (examples, datagrams, polls) keeps
the whole file around 20-30 s on a shared 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import encoder
from pysnmp.proto import api, rfc1905

from qkdtel.drivers.qkd_snmp import QkdSnmpDriver
from qkdtel.drivers.qkd_snmp.ber import (
    BerError,
    decode_response,
    decode_scoped_pdu,
    decode_v2c,
    decode_v3,
    encode_scoped_pdu,
    encode_usm_parameters,
    encode_v3,
)
from qkdtel.drivers.qkd_snmp.profiles import PROFILES
from qkdtel.drivers.qkd_snmp.resolve import resolve
from qkdtel.sdk import Malformed, PollError
from tests.ber_work import ber_lines
from tests.fixtures_hil import driver_options
from tests.test_snmp_attacks import Attacker, blast, capture, v3_args
from tests.test_traps import QUEVEDO, V3, Harness, run

LINES_PER_OCTET = 12
FIXED_LINES = 120
"""The decoder's work budget for one datagram, in lines of `ber.py` executed (`ber_lines`):
linear in its size, with room for a real message (the seeds take ~9 lines an octet, junk stops
within ~100)."""


def seed_messages() -> list[bytes]:
    """Real encodings (pyasn1's) of a v2c Response and the same PDU in SNMPv3 framing."""
    v2c = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = v2c.GetResponsePDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_request_id(pdu, 424242)
    base = (1, 3, 6, 1, 4, 1, 32473, 2, 1, 1)
    values = [
        v2c.OctetString(b"Norte"), v2c.Integer(-5012), v2c.Counter64(2**63 + 7),
        v2c.IpAddress("10.0.4.21"), v2c.ObjectIdentifier(base), v2c.TimeTicks(123456),
        v2c.Gauge32(4294967295), v2c.Counter32(17), rfc1905.noSuchInstance, rfc1905.endOfMibView,
    ]  # fmt: skip
    v2c.apiPDU.set_varbinds(pdu, [((*base, i, 1), v) for i, v in enumerate(values)])
    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, "public")
    v2c.apiMessage.set_pdu(message, pdu)
    engine = b"\x80\x00\x7e\xd9\x04cerb-quevedo"
    usm = encode_usm_parameters(engine, 3, 86400, b"qkdtel", bytes(12), b"")
    v3 = encode_v3(424242, 65507, 0, usm, encode_scoped_pdu(engine, b"", encoder.encode(pdu)))
    return [encoder.encode(message), v3]


SEEDS = seed_messages()


def mutate(data: bytes, rng: random.Random, rounds: int) -> bytes:
    """Byte-level mutations a fuzzer would make, including runs that make huge integers and
    sub-identifiers (0x81 continuation octets) and long-form lengths."""
    out = bytearray(data)
    for _ in range(rounds):
        pos = rng.randrange(len(out) + 1)
        op = rng.randrange(6)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(pos, len(out) - 1)] = rng.choice((0x00, 0x7F, 0x80, 0x81, 0x84, 0xFF))
        elif op == 2:
            out[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        elif op == 3:
            del out[pos : pos + rng.randrange(1, 9)]
        elif op == 4:
            out[pos:pos] = b"\x81" * rng.randrange(1, 6000)
        else:
            out[pos:pos] = b"\x84\xff\xff\xff\xff"
    return bytes(out)


@st.composite
def mutated(draw: Any) -> bytes:
    seed = draw(st.sampled_from(SEEDS))
    rng = random.Random(draw(st.integers(0, 2**32)))
    return mutate(seed, rng, draw(st.integers(1, 8)))


def decode_everything(data: bytes) -> None:
    """Every decoder entry point a datagram can reach; BerError is the only way out."""
    for decode in (decode_response, decode_v2c, decode_scoped_pdu):
        with contextlib.suppress(BerError):
            decode(data)
    try:
        message = decode_v3(data)
    except BerError:
        return
    if not message.encrypted:
        with contextlib.suppress(BerError):
            decode_scoped_pdu(message.data)


def test_seeds_decode():
    assert len(decode_response(SEEDS[0]).varbinds) == 10
    assert len(decode_scoped_pdu(decode_v3(SEEDS[1]).data)[2].varbinds) == 10


@settings(max_examples=600, deadline=None, derandomize=True)
@given(mutated())
def test_ber_decoder_only_raises_ber_error_in_linear_work(data: bytes):
    assert ber_lines(decode_everything, data) <= FIXED_LINES + LINES_PER_OCTET * len(data)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=2048))
def test_ber_decoder_takes_random_bytes(data: bytes):
    assert ber_lines(decode_everything, data) <= FIXED_LINES + LINES_PER_OCTET * len(data)


WIRE_VALUES = st.one_of(
    st.integers(),  # unbounded on purpose: the conversions must not trust the decoder
    st.binary(max_size=64),
    st.text(max_size=32).map(str.encode),
    st.sampled_from([b"1e400", b"nan", b"-0", b"C34", b"O", b"", "9" * 5000]).map(
        lambda v: v if isinstance(v, bytes) else v.encode()
    ),
    st.tuples(st.integers(0, 2), st.integers(0, 39)),
    st.none(),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(PROFILES)), st.data())
def test_profile_conversions_only_raise_malformed(profile: str, data: Any):
    mib = resolve(profile)
    decoded: dict[str, int | str] = {}
    for name in (*mib.profile.scalar_names, *mib.profile.column_names):
        value = data.draw(WIRE_VALUES)
        try:
            decoded[name] = mib.objects[name].decode(value, name)
        except Malformed as exc:
            assert len(str(exc)) < 300
    for outs in (mib.profile.scalars, mib.profile.columns):
        try:
            mib.convert(outs, decoded, ".1")
        except Malformed as exc:
            assert len(str(exc)) < 300


# ---- both clients: answers mutated between a simulated agent and the driver --------------------


class Mutator(Attacker):
    """The relay, mutating every answer the agent sends back (seeded, reproducible)."""

    def __init__(self, agent: tuple[str, int], seed: int):
        super().__init__(agent)
        self.rng = random.Random(seed)
        self.mutating = True
        self.transform = self.answer

    def answer(self, data: bytes) -> bytes:
        if not self.mutating or self.rng.random() < 0.2:  # some answers get through intact
            return data
        return mutate(data, self.rng, self.rng.randrange(1, 6))


async def healed(driver: QkdSnmpDriver, polls: int = 3) -> Any:
    """The first successful poll's samples within a few polls (a shared CI machine may delay
    one answer past the short request timeout the fuzzing needs); None if none succeeds."""
    for _ in range(polls):
        try:
            return await driver.poll()
        except PollError:
            continue
    return None


@pytest.mark.parametrize("version", ["2c", "3"])
def test_clients_take_mutated_answers_as_poll_errors_and_heal(single_agent, version):
    sim = single_agent("toshiba", version=version)
    escaped: list[dict] = []

    async def main() -> tuple[dict[str, int], list[str], Any]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: escaped.append(ctx))
        relay = Mutator((sim.host, sim.port), seed=14)
        address = await relay.start()
        entry = {**sim.device, "address": address}
        entry["snmp"] = {**entry["snmp"], "request_timeout": 0.25, "retries": 0}
        driver = QkdSnmpDriver(entry["name"], driver_options(entry), timeout=10.0)
        outcomes = []
        try:
            tracemalloc.start()
            for _ in range(30):
                started = time.monotonic()
                try:
                    await driver.poll()
                    outcomes.append("ok")
                except PollError as exc:
                    outcomes.append(exc.kind)
                assert time.monotonic() - started < 3.0
            grown = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            assert grown < 4 * 2**20, grown
            relay.mutating = False
            # The same client, state and all, only more patient: on a loaded CI machine the
            # 0.25 s the fuzzing needs can be too short for an intact answer too.
            client = driver._client
            client.settings = client.settings.model_copy(update={"request_timeout": 2.0})
            return client.ignored, outcomes, await healed(driver)
        finally:
            await driver.aclose()
            relay.close()

    ignored, outcomes, heal = asyncio.run(main())
    assert heal is not None, "no poll succeeded once answers were intact again"
    assert not escaped, escaped[:3]
    assert set(outcomes) <= {"ok", "timeout", "malformed", "auth", "error", "no_such_object"}
    assert sum(ignored.values()) > 0 and outcomes.count("ok") < len(outcomes)


# ---- the trap receiver ---------------------------------------------------------------------------


@pytest.mark.usefixtures("netsnmp_tools")
def test_trap_receiver_takes_mutated_traps_without_escapes_in_bounded_memory():
    seeds = [
        capture("-v2c", "-c", "trapcomm"),
        capture(*v3_args("authPriv")),
        capture(*v3_args("noAuthNoPriv", user="plain")),
    ]
    rng = random.Random(2026)
    datagrams = [mutate(rng.choice(seeds), rng, rng.randrange(1, 6)) for _ in range(1500)]
    escaped: list[dict] = []

    async def test(h: Harness) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: escaped.append(ctx))
        await blast(h, datagrams[:100])
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            started = time.process_time()
            await blast(h, datagrams[100:])
            cpu = time.process_time() - started
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert cpu / 1400 < 0.005, cpu
        assert grown < 4 * 2**20, grown
        assert h.receiver.accepted + sum(h.receiver.refused.values()) == 1500
        assert h.receiver.refused["undecodable"] > 0 and h.receiver.refused["wrong_digest"] > 0
        assert h.receiver.refused["error"] == 0  # nothing got as far as raising in pysnmp

    run(test, QUEVEDO, users=[V3, {"user": "plain"}])
    assert not escaped, escaped[:3]

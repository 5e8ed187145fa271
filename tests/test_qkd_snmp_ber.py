"""The SNMPv2c codec of the qkd_snmp driver against pysnmp/pyasn1, the reference encoder and
decoder: what one writes the other must read back identically, for generated messages."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder, encoder
from pyasn1.type import univ
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.api import v2c

from qkdtel.drivers.qkd_snmp.ber import (
    END_OF_MIB_VIEW,
    GET,
    GET_BULK,
    NO_SUCH_INSTANCE,
    BerError,
    IpAddress,
    Opaque,
    decode_response,
    encode_request,
    from_pyasn1,
)
from tests.ber_work import ber_lines

arcs = st.integers(0, 2**32 - 1)
oids = st.tuples(st.integers(0, 1), st.integers(0, 39), st.lists(arcs, max_size=20)).map(
    lambda t: (t[0], t[1], *t[2])
) | st.tuples(st.just(2), st.integers(0, 2**20), st.lists(arcs, max_size=20)).map(
    lambda t: (t[0], t[1], *t[2])
)

values = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(rfc1902.Integer32),
    st.binary(max_size=300).map(rfc1902.OctetString),
    st.integers(0, 2**32 - 1).map(rfc1902.Counter32),
    st.integers(0, 2**32 - 1).map(rfc1902.Gauge32),
    st.integers(0, 2**32 - 1).map(rfc1902.TimeTicks),
    st.integers(0, 2**64 - 1).map(rfc1902.Counter64),
    st.binary(min_size=4, max_size=4).map(rfc1902.IpAddress),
    st.binary(max_size=20).map(rfc1902.Opaque),
    oids.map(rfc1902.ObjectName),
    st.just(rfc1902.Null("")),
    st.sampled_from([rfc1905.noSuchObject, rfc1905.noSuchInstance, rfc1905.endOfMibView]),
)


@settings(max_examples=300, deadline=None)
@given(
    community=st.binary(min_size=1, max_size=200),
    request_id=st.integers(0, 2**31 - 1),
    names=st.lists(oids, min_size=1, max_size=40),
    bulk=st.booleans(),
    counts=st.tuples(st.integers(0, 10), st.integers(0, 2**31 - 1)),
)
def test_requests_decode_with_pyasn1(community, request_id, names, bulk, counts):
    pdu_type = GET_BULK if bulk else GET
    wire = encode_request(community, pdu_type, request_id, names, *(counts if bulk else (0, 0)))
    message, rest = decoder.decode(wire, asn1Spec=v2c.Message())
    assert rest == b""
    assert bytes(message["community"]) == community
    pdu = v2c.apiMessage.get_pdu(message)
    expected_type = v2c.GetBulkRequestPDU if bulk else v2c.GetRequestPDU
    assert pdu.tagSet == expected_type.tagSet
    assert int(v2c.apiPDU.get_request_id(pdu)) == request_id
    if bulk:
        assert int(v2c.apiBulkPDU.get_non_repeaters(pdu)) == counts[0]
        assert int(v2c.apiBulkPDU.get_max_repetitions(pdu)) == counts[1]
    got = v2c.apiPDU.get_varbinds(pdu)
    assert [tuple(oid) for oid, _ in got] == names
    assert all(isinstance(value, univ.Null) for _, value in got)


def response_wire(request_id: int, status: int, index: int, varbinds: list) -> bytes:
    pdu = v2c.ResponsePDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_request_id(pdu, request_id)
    v2c.apiPDU.set_error_status(pdu, status)
    v2c.apiPDU.set_error_index(pdu, index)
    v2c.apiPDU.set_varbinds(pdu, varbinds)
    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, "public")
    v2c.apiMessage.set_pdu(message, pdu)
    return encoder.encode(message)


@settings(max_examples=300, deadline=None)
@given(
    request_id=st.integers(0, 2**31 - 1),
    status=st.integers(0, 18),
    index=st.integers(0, 40),
    varbinds=st.lists(st.tuples(oids, values), max_size=40),
)
def test_responses_encoded_by_pyasn1_decode_to_plain_values(request_id, status, index, varbinds):
    wire = response_wire(
        request_id, status, index, [(rfc1902.ObjectName(o), v) for o, v in varbinds]
    )
    response = decode_response(wire)
    assert (response.request_id, response.error_status, response.error_index) == (
        request_id,
        status,
        index,
    )
    assert response.varbinds == [(oid, from_pyasn1(value)) for oid, value in varbinds]


def test_plain_values_keep_their_snmp_kinds_apart():
    wire = response_wire(
        7, 0, 0,
        [
            (rfc1902.ObjectName((1, 3, 6, 1, 1)), rfc1902.IpAddress("10.0.0.1")),
            (rfc1902.ObjectName((1, 3, 6, 1, 2)), rfc1902.Opaque(b"\x9f\x78\x04")),
            (rfc1902.ObjectName((1, 3, 6, 1, 3)), rfc1902.Counter64(2**64 - 1)),
            (rfc1902.ObjectName((1, 3, 6, 1, 4)), rfc1902.Integer32(-1950)),
            (rfc1902.ObjectName((1, 3, 6, 1, 5)), rfc1905.noSuchInstance),
            (rfc1902.ObjectName((1, 3, 6, 1, 6)), rfc1905.endOfMibView),
        ],
    )  # fmt: skip
    values = [value for _, value in decode_response(wire).varbinds]
    assert values[0] == IpAddress("10.0.0.1") and type(values[1]) is Opaque
    assert values[2:4] == [2**64 - 1, -1950]
    assert values[4] is NO_SUCH_INSTANCE and values[5] is END_OF_MIB_VIEW


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_junk_is_a_ber_error_never_a_crash(junk):
    with contextlib.suppress(BerError):
        decode_response(junk)


@pytest.mark.parametrize(
    "mutation",
    [
        lambda w: w[:-1],  # truncated
        lambda w: w.replace(b"\xa2", b"\xa0", 1),  # a GetRequest, not a Response
        lambda w: w[:4] + b"\x00" + w[5:],  # version 0 (SNMPv1)
    ],
    ids=["truncated", "not-a-response", "snmpv1"],
)
def test_wrong_messages_are_refused(mutation):
    wire = response_wire(1, 0, 0, [(rfc1902.ObjectName((1, 3, 6, 1)), rfc1902.Integer32(5))])
    assert decode_response(wire).varbinds == [((1, 3, 6, 1), 5)]
    with pytest.raises(BerError):
        decode_response(mutation(wire))


# ---- bounds: what no agent sends, refused before it costs anything ----------------------------


def response_with_raw_value(
    tag: int, content: bytes, oid_content: bytes = b"\x2b\x06\x01"
) -> bytes:
    """A v2c Response whose one varbind carries `content` under `tag` (hand-built TLVs)."""

    def tlv(t: int, body: bytes) -> bytes:
        n = len(body)
        size = bytes((n,)) if n < 0x80 else bytes((0x82, n >> 8, n & 0xFF))
        return bytes((t,)) + size + body

    varbind = tlv(0x30, tlv(0x06, oid_content) + tlv(tag, content))
    pdu = tlv(0xA2, b"\x02\x01\x07\x02\x01\x00\x02\x01\x00" + tlv(0x30, varbind))
    return tlv(0x30, b"\x02\x01\x01" + tlv(0x04, b"public") + pdu)


@pytest.mark.parametrize("octets", [6, 600, 65000])
def test_a_huge_sub_identifier_is_refused_in_constant_work(octets: int):
    """65,000 octets would be one sub-identifier of 455,000 bits: quadratic big-integer shifts,
    were it not refused by its length or within its first five octets."""
    huge = b"\x2b" + b"\xff" * octets + b"\x01"
    wire = response_with_raw_value(0x05, b"", oid_content=huge)
    with pytest.raises(BerError, match="OBJECT IDENTIFIER"):
        decode_response(wire)
    assert ber_lines(decode_response, wire) < 300  # the whole message: ~200 lines at any size


@pytest.mark.parametrize(
    ("tag", "content", "accepted"),
    [
        (0x02, b"\x7f\xff\xff\xff", 2**31 - 1),
        (0x02, b"\x01\x00\x00\x00\x00", None),  # beyond Integer32
        (0x02, b"\x01" * 2000, None),  # the 4,300-digit int-to-str limit lives past this
        (0x41, b"\x00\xff\xff\xff\xff", 2**32 - 1),
        (0x41, b"\xff\xff\xff\xff", 2**32 - 1),  # without the 0x00 pad: still read
        (0x41, b"\x01\x00\x00\x00\x00", None),  # Counter32 beyond 32 bits
        (0x46, b"\x00" + b"\xff" * 8, 2**64 - 1),
        (0x46, b"\x01" + b"\x00" * 8, None),
        (0x02, b"", None),
    ],
)
def test_integers_beyond_their_snmp_type_are_ber_errors(tag, content, accepted):
    wire = response_with_raw_value(tag, content)
    if accepted is None:
        with pytest.raises(BerError):
            decode_response(wire)
    else:
        assert decode_response(wire).varbinds[0][1] == accepted


def test_oids_beyond_128_sub_identifiers_are_refused():
    assert len(decode_response(response_with_raw_value(0x06, b"\x2b" + b"\x01" * 126)).varbinds)
    with pytest.raises(BerError):
        decode_response(response_with_raw_value(0x06, b"\x2b" + b"\x01" * 127))


def test_pyasn1_values_beyond_snmp_ranges_are_ber_errors():
    """The trap receiver's values come from pyasn1, which decodes integers of any size."""
    with pytest.raises(BerError):
        from_pyasn1(univ.Integer(2**64))
    with pytest.raises(BerError):
        from_pyasn1(univ.ObjectIdentifier((1, 3, 2**33)))
    assert from_pyasn1(rfc1902.Counter64(2**64 - 1)) == 2**64 - 1

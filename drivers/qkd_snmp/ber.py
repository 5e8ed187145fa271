"""Just enough BER for SNMPv2c manager messages, and the plain values both clients hand back.

Why not pyasn1 (what pysnmp uses): a poller spends most of its CPU decoding answers, and
pyasn1's schema-driven decoder builds and clones a tree of objects per varbind, about 60 us
each. SNMP requests and responses are a fixed, tiny subset of BER (definite lengths, primitive
values, one PDU layout), which this module reads and writes directly into Python ints, bytes
and tuples: the SNMPv2c message, and the SNMPv3 message, USM parameters and scoped PDU
framing (the security itself is usm.py's).

Values are plain Python: `int` for INTEGER and the unsigned application types, `bytes` for
OCTET STRING, `IpAddress`/`Opaque` for those, a tuple for an OBJECT IDENTIFIER, None for
NULL, and the `SnmpException` singletons for noSuchObject, noSuchInstance and endOfMibView.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

Oid = tuple[int, ...]

VERSION_2C, VERSION_3 = 1, 3
GET, GET_NEXT, RESPONSE, GET_BULK, REPORT = 0xA0, 0xA1, 0xA2, 0xA5, 0xA8
INFORM, TRAP = 0xA6, 0xA7  # InformRequest-PDU, SNMPv2-Trap-PDU
USM = 3  # msgSecurityModel of the User-based Security Model
FLAG_AUTH, FLAG_PRIV, FLAG_REPORTABLE = 0x01, 0x02, 0x04
ERROR_STATUS = (
    "noError", "tooBig", "noSuchName", "badValue", "readOnly", "genErr", "noAccess",
    "wrongType", "wrongLength", "wrongEncoding", "wrongValue", "noCreation",
    "inconsistentValue", "resourceUnavailable", "commitFailed", "undoFailed",
    "authorizationError", "notWritable", "inconsistentName",
)  # fmt: skip
"""RFC 3416 error-status names by value."""

MAX_ARCS = 128
"""Sub-identifiers an OBJECT IDENTIFIER may have (RFC 2578 section 3.5)."""
MAX_ARC = 0xFFFFFFFF
"""Largest sub-identifier (RFC 2578: 32-bit unsigned); at most 5 octets on the wire."""
INT32 = (-(1 << 31), (1 << 31) - 1)
"""INTEGER / Integer32 range (RFC 2578 section 7.1.1), also request-id and msgID."""
UNSIGNED64_MAX = (1 << 64) - 1
_UNSIGNED_MAX = {0x41: 0xFFFFFFFF, 0x42: 0xFFFFFFFF, 0x43: 0xFFFFFFFF, 0x46: UNSIGNED64_MAX}
"""Counter32, Gauge32/Unsigned32, TimeTicks, Counter64: the largest value of each."""


class BerError(ValueError):
    """Bytes that are not the SNMP message they should be."""


class SnmpException:
    """The RFC 3416 varbind exceptions: a value slot saying why there is no value."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NO_SUCH_OBJECT = SnmpException("noSuchObject")
NO_SUCH_INSTANCE = SnmpException("noSuchInstance")
END_OF_MIB_VIEW = SnmpException("endOfMibView")
_EXCEPTIONS = {0x80: NO_SUCH_OBJECT, 0x81: NO_SUCH_INSTANCE, 0x82: END_OF_MIB_VIEW}


class IpAddress(ipaddress.IPv4Address):
    """An IpAddress value (kept apart from strings: it is no DisplayString)."""


class Opaque(bytes):
    """An Opaque value (BER-wrapped data some agents use for floats)."""


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded Response-PDU (or Report-PDU: same layout)."""

    request_id: int
    error_status: int
    error_index: int
    varbinds: list[tuple[Oid, Any]]


# ---- encoding ---------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _integer(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def encode_oid(oid: Oid) -> bytes:
    """OBJECT IDENTIFIER content octets (X.690 8.19)."""
    if len(oid) < 2 or oid[0] > 2 or (oid[0] < 2 and oid[1] >= 40):
        raise BerError(f"not a valid OBJECT IDENTIFIER: {oid}")
    out = bytearray()
    for arc in (oid[0] * 40 + oid[1], *oid[2:]):
        if arc < 0:
            raise BerError(f"negative arc in {oid}")
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


@lru_cache(maxsize=8192)
def null_varbind(oid: Oid) -> bytes:
    """`VarBind { oid, NULL }` as a request carries it (cached: requests repeat their OIDs)."""
    return _tlv(0x30, _tlv(0x06, encode_oid(oid)) + b"\x05\x00")


def encode_pdu(pdu: int, request_id: int, oids: list[Oid], a: int = 0, b: int = 0) -> bytes:
    """A request PDU; `a`, `b` are error-status/index, or for GETBULK non-repeaters and
    max-repetitions."""
    varbinds = _tlv(0x30, b"".join(null_varbind(oid) for oid in oids))
    return _tlv(pdu, _integer(request_id) + _integer(a) + _integer(b) + varbinds)


def encode_request(
    community: bytes, pdu: int, request_id: int, oids: list[Oid], a: int = 0, b: int = 0
) -> bytes:
    """A v2c request message (see `encode_pdu`)."""
    message = _integer(VERSION_2C) + _tlv(0x04, community)
    return _tlv(0x30, message + encode_pdu(pdu, request_id, oids, a, b))


def encode_scoped_pdu(context_engine_id: bytes, context_name: bytes, pdu: bytes) -> bytes:
    """ScopedPDU ::= SEQUENCE { contextEngineID, contextName, data }."""
    return _tlv(0x30, _tlv(0x04, context_engine_id) + _tlv(0x04, context_name) + pdu)


def encode_usm_parameters(
    engine_id: bytes, boots: int, time: int, user: bytes, auth: bytes, priv: bytes
) -> bytes:
    """UsmSecurityParameters (RFC 3414 2.4), BER-encoded."""
    content = _tlv(0x04, engine_id) + _integer(boots) + _integer(time) + _tlv(0x04, user)
    return _tlv(0x30, content + _tlv(0x04, auth) + _tlv(0x04, priv))


def encode_v3(msg_id: int, max_size: int, flags: int, usm: bytes, data: bytes) -> bytes:
    """SNMPv3Message; `data` is the encoded ScopedPDU, or the encryptedPDU OCTET STRING."""
    header = _tlv(
        0x30, _integer(msg_id) + _integer(max_size) + _tlv(0x04, bytes((flags,))) + _integer(USM)
    )
    return _tlv(0x30, _integer(VERSION_3) + header + _tlv(0x04, usm) + data)


def octet_string(content: bytes) -> bytes:
    """An OCTET STRING TLV (the encryptedPDU form of msgData)."""
    return _tlv(0x04, content)


# ---- decoding ---------------------------------------------------------------------------------


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at `pos`."""
    if pos + 2 > end:
        raise BerError("truncated")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-byte tags are not SNMP")
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise BerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > end:
        raise BerError("truncated")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    got, start, stop = _header(data, pos, end)
    if got != tag:
        raise BerError(f"expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


@lru_cache(maxsize=8192)
def decode_oid(content: bytes) -> Oid:
    """OBJECT IDENTIFIER content octets -> arcs.

    Bounded before any arithmetic: at most `MAX_ARCS` arcs of at most 32 bits each, so a
    forged 65 kB sub-identifier costs one length check, not quadratic big-integer shifts.
    Cached: every poll of a profile's table answers the same OIDs (columns x rows), and a
    collector decodes one per varbind (~5-19 us each, ~0.6 us from the cache); refused OIDs
    raise and are never cached, and the cache's size bounds what forged ones can take.
    """
    if not content or content[-1] & 0x80 or len(content) > MAX_ARCS * 5:
        raise BerError("bad OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if value > MAX_ARC + 80:  # the first sub-identifier packs two arcs: 2 * 40 + arc
            raise BerError("OBJECT IDENTIFIER sub-identifier beyond 32 bits")
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if len(arcs) > MAX_ARCS - 1 or any(arc > MAX_ARC for arc in arcs[1:]):
        raise BerError(f"OBJECT IDENTIFIER beyond {MAX_ARCS} 32-bit sub-identifiers")
    first = arcs[0]
    head = (0, first) if first < 40 else (1, first - 40) if first < 80 else (2, first - 80)
    return (*head, *arcs[1:])


def _int32(content: bytes) -> int:
    """An INTEGER's content octets -> int within Integer32 (request-id, msgID, values)."""
    if not content or len(content) > 5:
        raise BerError("INTEGER is empty or wider than 32 bits")
    value = int.from_bytes(content, "big", signed=True)
    if not INT32[0] <= value <= INT32[1]:
        raise BerError("INTEGER outside the 32-bit range")
    return value


def _unsigned(tag: int, content: bytes) -> int:
    """An unsigned application type's content -> int, within that type's range."""
    if not content or len(content) > 9:
        raise BerError("unsigned value is empty or wider than 64 bits")
    value = int.from_bytes(content, "big")  # unsigned: agents that drop the 0x00 pad still read
    if value > _UNSIGNED_MAX[tag]:
        raise BerError(f"value of type 0x{tag:02x} out of its range")
    return value


def _value(tag: int, content: bytes) -> Any:
    if tag == 0x02:
        return _int32(content)
    if tag in _UNSIGNED_MAX:  # Counter32, Gauge32/Unsigned32, TimeTicks, Counter64
        return _unsigned(tag, content)
    if tag == 0x04:
        return bytes(content)
    if tag == 0x06:
        return decode_oid(content)
    if tag == 0x05:
        return None
    if tag == 0x40:
        if len(content) != 4:
            raise BerError("IpAddress is not 4 octets")
        return IpAddress(bytes(content))
    if tag == 0x44:
        return Opaque(content)
    exception = _EXCEPTIONS.get(tag)
    if exception is None:
        raise BerError(f"unknown value tag 0x{tag:02x}")
    return exception


def _integer_at(data: bytes, pos: int, end: int) -> tuple[int, int]:
    start, stop = _expect(data, pos, end, 0x02)
    return _int32(data[start:stop]), stop


def _octets_at(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(start, end) of the OCTET STRING content at `pos`."""
    return _expect(data, pos, end, 0x04)


def decode_pdu(data: bytes, pos: int, end: int) -> tuple[int, Response]:
    """The PDU at `pos` -> (PDU tag, its request-id, error fields and varbinds)."""
    tag, pos, end = _header(data, pos, end)
    numbers = []
    for _ in range(3):
        number, pos = _integer_at(data, pos, end)
        numbers.append(number)
    pos, end = _expect(data, pos, end, 0x30)
    varbinds = []
    while pos < end:
        start, pos = _expect(data, pos, end, 0x30)
        oid_start, oid_end = _expect(data, start, pos, 0x06)
        value_tag, value_start, value_end = _header(data, oid_end, pos)
        if value_end != pos:
            raise BerError("junk after a varbind value")
        varbinds.append(
            (decode_oid(data[oid_start:oid_end]), _value(value_tag, data[value_start:value_end]))
        )
    return tag, Response(numbers[0], numbers[1], numbers[2], varbinds)


def decode_v2c(data: bytes) -> tuple[bytes, int, Response]:
    """A v2c message -> (community, PDU tag, PDU in the Response layout, which notifications
    share); `BerError` for anything else."""
    pos, end = _expect(data, 0, len(data), 0x30)
    version, pos = _integer_at(data, pos, end)
    if version != VERSION_2C:
        raise BerError("not an SNMPv2c message")
    start, pos = _octets_at(data, pos, end)
    tag, pdu = decode_pdu(data, pos, end)
    return data[start:pos], tag, pdu


def decode_response(data: bytes) -> Response:
    """A v2c message carrying a Response-PDU -> `Response`; `BerError` for anything else.
    The community is not checked: agents echo ours."""
    _, tag, response = decode_v2c(data)
    if tag != RESPONSE:
        raise BerError(f"expected a Response-PDU, got tag 0x{tag:02x}")
    return response


@dataclass(frozen=True, slots=True)
class V3Message:
    """An SNMPv3 message, security parameters decoded, msgData still raw.

    `auth_at` is the (start, end) of msgAuthenticationParameters within the message: to check
    the digest, zero those octets and run the HMAC over the whole message.
    """

    msg_id: int
    flags: int
    engine_id: bytes
    boots: int
    time: int
    user: bytes
    auth: bytes
    auth_at: tuple[int, int]
    priv: bytes
    encrypted: bool
    data: bytes  # the ScopedPDU TLV, or the encryptedPDU content


def decode_v3(data: bytes) -> V3Message:
    """An SNMPv3 message with USM parameters -> `V3Message`; `BerError` for anything else."""
    pos, end = _expect(data, 0, len(data), 0x30)
    version, pos = _integer_at(data, pos, end)
    if version != VERSION_3:
        raise BerError("not an SNMPv3 message")
    start, pos = _expect(data, pos, end, 0x30)
    msg_id, start = _integer_at(data, start, pos)
    _, start = _integer_at(data, start, pos)  # msgMaxSize
    flags_start, flags_end = _octets_at(data, start, pos)
    model, _ = _integer_at(data, flags_end, pos)
    if model != USM or flags_end - flags_start != 1:
        raise BerError("not a USM message")
    usm_start, usm_end = _octets_at(data, pos, end)
    at, usm_stop = _expect(data, usm_start, usm_end, 0x30)
    fields: list[Any] = []
    spans = []
    for kind in (0x04, 0x02, 0x02, 0x04, 0x04, 0x04):
        value_start, value_end = _expect(data, at, usm_stop, kind)
        content = data[value_start:value_end]
        fields.append(content if kind == 0x04 else _int32(content))
        spans.append((value_start, value_end))
        at = value_end
    tag, data_start, data_end = _header(data, usm_end, end)
    if tag not in (0x30, 0x04):
        raise BerError("msgData is neither a ScopedPDU nor an encryptedPDU")
    encrypted = tag == 0x04
    return V3Message(
        msg_id=msg_id,
        flags=data[flags_start],
        engine_id=fields[0],
        boots=fields[1],
        time=fields[2],
        user=fields[3],
        auth=fields[4],
        auth_at=spans[4],
        priv=fields[5],
        encrypted=encrypted,
        data=data[data_start:data_end] if encrypted else data[usm_end:data_end],
    )


def decode_scoped_pdu(data: bytes) -> tuple[bytes, int, Response]:
    """A ScopedPDU TLV -> (contextEngineID, PDU tag, PDU); `BerError` for junk, including
    the padding garbage a wrong privacy key decrypts to."""
    pos, end = _expect(data, 0, len(data), 0x30)
    engine_start, engine_end = _octets_at(data, pos, end)
    _, pos = _octets_at(data, engine_end, end)  # contextName
    tag, response = decode_pdu(data, pos, end)
    return data[engine_start:engine_end], tag, response


def _bounded_int(value: int) -> int:
    """An integer pyasn1 decoded (it takes any size) within what SNMP types can carry."""
    if not INT32[0] <= value <= UNSIGNED64_MAX:
        raise BerError("integer outside every SNMP type's range")
    return value


def from_pyasn1(value: Any) -> Any:
    """A pysnmp (pyasn1) varbind value -> the plain value this module decodes to."""
    from pyasn1.type import univ
    from pysnmp.proto import rfc1902, rfc1905

    if isinstance(value, rfc1905.NoSuchObject):
        return NO_SUCH_OBJECT
    if isinstance(value, rfc1905.NoSuchInstance):
        return NO_SUCH_INSTANCE
    if isinstance(value, rfc1905.EndOfMibView):
        return END_OF_MIB_VIEW
    if isinstance(value, rfc1902.IpAddress):
        return IpAddress(bytes(value))
    if isinstance(value, rfc1902.Opaque):
        return Opaque(bytes(value))
    if isinstance(value, univ.Null):  # before OctetString: pyasn1 derives Null from it
        return None
    if isinstance(value, univ.Integer):
        return _bounded_int(int(value))
    if isinstance(value, univ.OctetString):
        return bytes(value)
    if isinstance(value, univ.ObjectIdentifier):
        arcs = tuple(value)
        if len(arcs) > MAX_ARCS or any(arc > MAX_ARC for arc in arcs):
            raise BerError(f"OBJECT IDENTIFIER beyond {MAX_ARCS} 32-bit sub-identifiers")
        return arcs
    raise BerError(f"unexpected value type {type(value).__name__}")

"""Just enough BER for SNMPv2c manager messages, and the plain values both clients hand back.

Why not pyasn1 (what pysnmp uses): a poller spends most of its CPU decoding answers, and
pyasn1's schema-driven decoder builds and clones a tree of objects per varbind, about 60 us
each. SNMPv2c requests and responses are a fixed, tiny subset of BER (definite lengths,
primitive values, one PDU layout), which this module reads and writes directly into Python
ints, bytes and tuples. SNMPv3 (USM security) stays with pysnmp.

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

VERSION_2C = 1
GET, GET_NEXT, RESPONSE, GET_BULK = 0xA0, 0xA1, 0xA2, 0xA5
ERROR_STATUS = (
    "noError", "tooBig", "noSuchName", "badValue", "readOnly", "genErr", "noAccess",
    "wrongType", "wrongLength", "wrongEncoding", "wrongValue", "noCreation",
    "inconsistentValue", "resourceUnavailable", "commitFailed", "undoFailed",
    "authorizationError", "notWritable", "inconsistentName",
)  # fmt: skip
"""RFC 3416 error-status names by value."""


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
    """A decoded Response-PDU."""

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


def encode_request(
    community: bytes, pdu: int, request_id: int, oids: list[Oid], a: int = 0, b: int = 0
) -> bytes:
    """A v2c request message; `a`, `b` are error-status/index, or for GETBULK non-repeaters
    and max-repetitions."""
    varbinds = _tlv(0x30, b"".join(null_varbind(oid) for oid in oids))
    body = _integer(request_id) + _integer(a) + _integer(b) + varbinds
    message = _integer(VERSION_2C) + _tlv(0x04, community) + _tlv(pdu, body)
    return _tlv(0x30, message)


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


def decode_oid(content: bytes) -> Oid:
    """OBJECT IDENTIFIER content octets -> arcs."""
    if not content or content[-1] & 0x80:
        raise BerError("bad OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = (0, first) if first < 40 else (1, first - 40) if first < 80 else (2, first - 80)
    return (*head, *arcs[1:])


def _value(tag: int, content: bytes) -> Any:
    if tag == 0x02:
        return int.from_bytes(content, "big", signed=True)
    if tag in (0x41, 0x42, 0x43, 0x46):  # Counter32, Gauge32/Unsigned32, TimeTicks, Counter64
        return int.from_bytes(content, "big", signed=False)
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


def decode_response(data: bytes) -> Response:
    """A v2c message carrying a Response-PDU -> `Response`; `BerError` for anything else."""
    end = len(data)
    pos, end = _expect(data, 0, end, 0x30)
    start, stop = _expect(data, pos, end, 0x02)
    if int.from_bytes(data[start:stop], "big", signed=True) != VERSION_2C:
        raise BerError("not an SNMPv2c message")
    _, pos = _expect(data, stop, end, 0x04)  # community: agents echo ours
    pos, end = _expect(data, pos, end, RESPONSE)
    numbers = []
    for _ in range(3):
        start, pos = _expect(data, pos, end, 0x02)
        numbers.append(int.from_bytes(data[start:pos], "big", signed=True))
    pos, end = _expect(data, pos, end, 0x30)
    varbinds = []
    while pos < end:
        start, pos = _expect(data, pos, end, 0x30)
        oid_start, oid_end = _expect(data, start, pos, 0x06)
        tag, value_start, value_end = _header(data, oid_end, pos)
        if value_end != pos:
            raise BerError("junk after a varbind value")
        varbinds.append(
            (decode_oid(data[oid_start:oid_end]), _value(tag, data[value_start:value_end]))
        )
    return Response(numbers[0], numbers[1], numbers[2], varbinds)


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
        return int(value)
    if isinstance(value, univ.OctetString):
        return bytes(value)
    if isinstance(value, univ.ObjectIdentifier):
        return tuple(value)
    raise BerError(f"unexpected value type {type(value).__name__}")

"""SNMPv3 with the User-based Security Model (RFC 3414, 3826, 7860), for polling.

The message framing is ber.py's (no pyasn1: that is where pysnmp spends its time); the
cryptography is pysnmp's own, reused as is: passphrase hashing and key localisation, and the
privacy services (DES, AES-128, AES-192/256), so keys and ciphertexts are exactly those of
pysnmp and Net-SNMP. Digests are HMACs from hashlib, truncated per protocol.

What the client keeps per agent: its snmpEngineID (learnt by discovery, RFC 3414 section 4),
the keys localised to it, and its boots/time clock (to stay inside the agent's 150 s window).
A `notInTimeWindow` report resynchronises the clock and the request is sent again once; an
`unknownEngineID` report (the agent was replaced) starts discovery again.

Answers are not checked against a time window of the client's own (RFC 3414 3.2 step 7b): an
answer is taken only for the msgID of a request still waiting, once, and msgIDs count up from a
random start, so an old answer replayed finds no request to answer. Such a check would also
strand the client on an agent that restarts without raising its snmpEngineBoots (pysnmp agents
do): every authenticated answer would then look older than the last one seen.

`add_usm_user` and the protocol tables also serve the trap receiver, which runs on pysnmp.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pyasn1.type import univ
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.proto.secmod.rfc3414.service import SnmpUSMSecurityModel

from qkdtel.drivers.qkd_snmp.ber import (
    FLAG_AUTH,
    FLAG_PRIV,
    FLAG_REPORTABLE,
    GET,
    GET_BULK,
    REPORT,
    RESPONSE,
    BerError,
    Response,
    V3Message,
    decode_scoped_pdu,
    decode_v3,
    encode_pdu,
    encode_scoped_pdu,
    encode_usm_parameters,
    encode_v3,
    octet_string,
)
from qkdtel.drivers.qkd_snmp.client import Oid, UdpClient, VarBind
from qkdtel.drivers.qkd_snmp.options import SnmpSettings
from qkdtel.errors import AuthError, Malformed, PollError

AUTH_PROTOCOLS = {
    None: config.USM_AUTH_NONE,
    "md5": config.USM_AUTH_HMAC96_MD5,
    "sha": config.USM_AUTH_HMAC96_SHA,
    "sha224": config.USM_AUTH_HMAC128_SHA224,
    "sha256": config.USM_AUTH_HMAC192_SHA256,
    "sha384": config.USM_AUTH_HMAC256_SHA384,
    "sha512": config.USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS = {
    "none": config.USM_PRIV_NONE,
    "des": config.USM_PRIV_CBC56_DES,
    "aes": config.USM_PRIV_CFB128_AES,
    "aes192": config.USM_PRIV_CFB192_AES,  # the Reeder key extension, as Net-SNMP and Cisco
    "aes256": config.USM_PRIV_CFB256_AES,
}
HASHES = {
    "md5": hashlib.md5,
    "sha": hashlib.sha1,
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
MAX_MESSAGE = 65507
MAX_BOOTS = 2147483647


def add_usm_user(
    engine: SnmpEngine, settings: SnmpSettings, engine_id: bytes | None = None
) -> None:
    """Register the settings' SNMPv3 user on a pysnmp engine (for `engine_id`, if given)."""
    assert settings.user is not None
    config.add_v3_user(
        engine,
        settings.user,
        AUTH_PROTOCOLS[settings.auth_protocol],
        settings.auth_key.get_secret_value() if settings.auth_key else None,
        PRIV_PROTOCOLS[settings.priv_protocol],
        settings.priv_key.get_secret_value() if settings.priv_key else None,
        securityEngineId=engine_id,
    )


@cache
def _mib_view() -> Any:
    """Names for the OIDs agents put in Report-PDUs (usmStats*, snmpUnknownContexts...)."""
    from pysnmp.smi.builder import MibBuilder
    from pysnmp.smi.view import MibViewController

    builder = MibBuilder()
    builder.load_modules("SNMP-USER-BASED-SM-MIB", "SNMP-MPD-MIB", "SNMP-TARGET-MIB")
    return MibViewController(builder)


def report_name(response: Response) -> str:
    """The MIB name of the counter a Report-PDU carries, e.g. `usmStatsWrongDigests`."""
    if not response.varbinds:
        return "an empty report"
    oid = response.varbinds[0][0]
    try:
        _, label, _ = _mib_view().get_node_name(oid)
    except Exception:  # pysnmp raises several kinds for an OID no loaded MIB names
        return ".".join(map(str, oid))
    return str(label[-1])


class _Resync(Exception):
    """The agent reported its clock or engine ID changed: send the request again."""


@dataclass
class _Peer:
    """What the client knows of the agent's engine."""

    engine_id: bytes
    boots: int = 0
    time: int = 0
    at: float = 0.0  # monotonic time at which `time` was learnt
    auth_key: bytes = b""
    priv_key: Any = None  # univ.OctetString, as pysnmp's privacy services take it

    def now(self) -> int:
        """The agent's snmpEngineTime now, as estimated from the last one learnt."""
        return min(self.time + int(time.monotonic() - self.at), MAX_BOOTS)

    def learn(self, boots: int, engine_time: int) -> None:
        self.boots, self.time, self.at = boots, engine_time, time.monotonic()


class UsmClient(UdpClient[tuple[V3Message, int, Response]]):
    """SNMPv3 requests (noAuthNoPriv, authNoPriv, authPriv) over one connected UDP socket."""

    def __init__(self, host: str, port: int, settings: SnmpSettings):
        super().__init__(host, port, settings)
        assert settings.user is not None
        self._user = settings.user.encode()
        self._context = settings.context.encode()
        self._auth = None
        self._hash: Any = None
        self._digest = 0
        self._priv = None
        self._flags = FLAG_REPORTABLE
        if settings.auth_protocol is not None and settings.auth_key is not None:
            self._auth = SnmpUSMSecurityModel.AUTH_SERVICES[AUTH_PROTOCOLS[settings.auth_protocol]]
            self._hash = HASHES[settings.auth_protocol]
            self._digest = self._auth.digest_length
            # Hashing the passphrase is 1 MB of hashing: once, here, not in a poll.
            self._auth_ku = self._auth.hash_passphrase(settings.auth_key.get_secret_value())
            self._flags |= FLAG_AUTH
        if settings.priv_protocol != "none" and settings.priv_key is not None:
            self._priv = SnmpUSMSecurityModel.PRIV_SERVICES[PRIV_PROTOCOLS[settings.priv_protocol]]
            self._priv_ku = self._priv.hash_passphrase(
                AUTH_PROTOCOLS[settings.auth_protocol], settings.priv_key.get_secret_value()
            )
            self._flags |= FLAG_PRIV
        self._peer: _Peer | None = None
        self._lock = asyncio.Lock()

    # ---- the wire ----------------------------------------------------------------------------

    def _decode(self, data: bytes) -> tuple[int, V3Message]:
        message = decode_v3(data)
        return message.msg_id, message

    def _open_answer(self, data: bytes, message: V3Message) -> tuple[V3Message, int, Response]:
        """Authenticate and decrypt an answer: (message, PDU type, PDU)."""
        peer = self._peer
        authentic = bool(message.flags & FLAG_AUTH)
        if authentic:
            if peer is None or message.engine_id != peer.engine_id or self._auth is None:
                raise AuthError(f"{self.where}: authenticated answer from an unknown engine")
            start, end = message.auth_at
            blank = data[:start] + bytes(end - start) + data[end:]
            digest = hmac.new(peer.auth_key, blank, self._hash).digest()[: self._digest]
            if not hmac.compare_digest(digest, message.auth):
                raise AuthError(f"{self.where}: answer failed authentication (wrong auth_key?)")
            if message.boots > peer.boots or (
                message.boots == peer.boots and message.time > peer.time
            ):
                peer.learn(message.boots, message.time)
        scoped = message.data
        if message.encrypted:
            if not (authentic and message.flags & FLAG_PRIV and self._priv is not None):
                raise Malformed(f"{self.where}: encrypted answer without authentication")
            assert peer is not None
            try:
                scoped = self._priv.decrypt_data(
                    peer.priv_key,
                    (message.boots, message.time, univ.OctetString(message.priv)),
                    univ.OctetString(message.data),
                )
            except Exception:  # pysnmp raises its StatusInformation or a cipher error
                raise AuthError(f"{self.where}: cannot decrypt the answer") from None
        try:
            _, tag, response = decode_scoped_pdu(scoped)
        except BerError as exc:
            hint = " (wrong priv_key?)" if message.encrypted else ""
            raise Malformed(f"{self.where}: unreadable scoped PDU{hint}: {exc}") from None
        if tag == RESPONSE and (
            (self._auth is not None and not authentic)
            or (self._priv is not None and not message.encrypted)
        ):  # RFC 3412 7.2.10: an answer comes at the security level of its request
            raise AuthError(f"{self.where}: answer below the request's security level")
        return message, tag, response

    # ---- engine discovery and requests -------------------------------------------------------

    async def _discover(self) -> _Peer:
        """Learn the agent's engine ID (and clock) from the report to an empty request."""
        async with self._lock:
            if self._peer is not None:
                return self._peer

            def build(msg_id: int) -> bytes:
                usm = encode_usm_parameters(b"", 0, 0, b"", b"", b"")
                scoped = encode_scoped_pdu(b"", b"", encode_pdu(GET, msg_id, []))
                return encode_v3(msg_id, MAX_MESSAGE, FLAG_REPORTABLE, usm, scoped)

            message, tag, _ = await self._round_trip(build)
            if tag != REPORT or not message.engine_id:
                raise Malformed(f"{self.where}: no engine ID in the answer to discovery")
            peer = _Peer(message.engine_id)
            peer.learn(message.boots, message.time)
            engine_id = univ.OctetString(message.engine_id)
            if self._auth is not None:
                peer.auth_key = self._auth.localize_key(self._auth_ku, engine_id).asOctets()
            if self._priv is not None:
                auth = AUTH_PROTOCOLS[self.settings.auth_protocol]
                peer.priv_key = self._priv.localize_key(auth, self._priv_ku, engine_id)
            self._peer = peer
            return peer

    def _message(self, peer: _Peer, msg_id: int, pdu: bytes) -> bytes:
        """An outgoing request: scoped PDU, encrypted and/or authenticated as configured."""
        scoped = encode_scoped_pdu(peer.engine_id, self._context, pdu)
        engine_time = peer.now()
        priv = b""
        if self._priv is not None:
            cipher, salt = self._priv.encrypt_data(
                peer.priv_key, (peer.boots, engine_time, None), scoped
            )
            scoped, priv = octet_string(bytes(cipher)), bytes(salt)
        placeholder = bytes(self._digest)
        usm = encode_usm_parameters(
            peer.engine_id, peer.boots, engine_time, self._user, placeholder, priv
        )
        wire = encode_v3(msg_id, MAX_MESSAGE, self._flags, usm, scoped)
        if self._auth is None:
            return wire
        # msgAuthenticationParameters is the next-to-last field of the USM parameters, which
        # end where msgData begins: its place follows from the lengths, no search needed.
        end = len(wire) - len(scoped) - len(octet_string(priv))
        digest = hmac.new(peer.auth_key, wire, self._hash).digest()[: self._digest]
        return wire[: end - self._digest] + digest + wire[end:]

    async def _exchange(
        self, oids: Sequence[Oid], max_repetitions: int | None, non_repeaters: int
    ) -> list[VarBind]:
        pdu_type = GET if max_repetitions is None else GET_BULK
        a, b = (0, 0) if max_repetitions is None else (non_repeaters, max_repetitions)
        for attempt in range(2):
            peer = self._peer or await self._discover()
            message, tag, response = await self._round_trip(
                lambda msg_id, peer=peer: self._message(
                    peer, msg_id, encode_pdu(pdu_type, msg_id, list(oids), a, b)
                )
            )
            try:
                return self._result(peer, message, tag, response, retry=attempt == 0)
            except _Resync:
                continue
        raise AuthError(f"{self.where}: cannot synchronise with the agent's engine")

    def _result(
        self, peer: _Peer, message: V3Message, tag: int, response: Response, retry: bool
    ) -> list[VarBind]:
        """The varbinds of an answer to a request sent to `peer`; errors for reports."""
        if tag == RESPONSE:
            if response.error_status:
                raise self.status_error(
                    response.error_status, response.error_index, response.varbinds
                )
            return response.varbinds
        if tag != REPORT:
            raise Malformed(f"{self.where}: answer is PDU type 0x{tag:02x}")
        name = report_name(response)
        if retry and name == "usmStatsNotInTimeWindows" and message.flags & FLAG_AUTH:
            peer.learn(message.boots, message.time)  # authenticated: trust its clock
            raise _Resync
        replaced = message.engine_id not in (b"", peer.engine_id)
        if retry and (name == "usmStatsUnknownEngineIDs" or replaced):
            # Another engine answers there now (some agents then report an unknown user, not
            # an unknown engine ID, but their report names their own engine): discover it,
            # unless a concurrent request already has.
            if self._peer is peer:
                self._peer = None
            raise _Resync
        if name.startswith("usmStats"):
            raise AuthError(f"{self.where}: SNMPv3 authentication failed: agent reports {name}")
        raise PollError(f"{self.where}: agent reports {name}")

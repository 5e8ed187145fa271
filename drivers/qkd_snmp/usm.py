"""SNMPv3 with the User-based Security Model (RFC 3414, 3826, 7860), for polling.

The message framing is ber.py's (no pyasn1: that is where pysnmp spends its time); the
cryptography is pysnmp's own, reused as is: passphrase hashing and key localisation, and the
privacy services (DES, AES-128, AES-192/256), so keys and ciphertexts are exactly those of
pysnmp and Net-SNMP. Digests are HMACs from hashlib, truncated per protocol.

What the client keeps per agent: its snmpEngineID (learnt by discovery, RFC 3414 section 4),
the keys localised to it, and its boots/time clock (to stay inside the agent's 150 s window).
An authenticated `notInTimeWindow` report resynchronises the clock and the request is sent
again once; an `unknownEngineID` report (the agent was replaced) starts discovery again. With
authentication configured, reports that are not authenticated (which anyone can forge for a
sniffed msgID) are only believed when the request got no authentic answer in all its attempts;
until then they are ignored and counted (`UdpClient.ignored`). See the threat model in README.md.

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
from functools import cache, lru_cache
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
from qkdtel.drivers.qkd_snmp.client import Ignored, Oid, UdpClient, VarBind
from qkdtel.drivers.qkd_snmp.options import SnmpSettings
from qkdtel.sdk import AuthError, Malformed, PollError

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
    # AES-192/256 keys are longer than any localised key: two drafts extend them differently,
    # and agents differ. Named as Net-SNMP names them (createUser ... AES192 / AES192C).
    "aes192": config.USM_PRIV_CFB192_AES_BLUMENTHAL,  # Blumenthal draft: Net-SNMP AES192
    "aes192c": config.USM_PRIV_CFB192_AES,  # Reeder draft: Net-SNMP AES192C, Cisco
    "aes256": config.USM_PRIV_CFB256_AES_BLUMENTHAL,
    "aes256c": config.USM_PRIV_CFB256_AES,
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
"""snmpEngineBoots and snmpEngineTime range (RFC 3414 2.2); boots at the maximum is latched."""
ENGINE_ID_SIZE = (5, 32)
"""SnmpEngineID length bounds (RFC 3411 section 5)."""


def usm_clock_ok(boots: int, engine_time: int) -> bool:
    """True for a boots/time pair an engine can have (RFC 3414 2.2: boots at its maximum
    means the engine can no longer be talked to)."""
    return 0 <= boots < MAX_BOOTS and 0 <= engine_time <= MAX_BOOTS


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


@lru_cache(maxsize=256)
def _hashed_passphrase(service: Any, *args: Any) -> Any:
    """`service.hash_passphrase(*args)`, once per service and passphrase in this process: 1 MB
    of hashing (~10-20 ms) that every device sharing the credentials would otherwise repeat
    (10,000 SNMPv3 devices: minutes of start-up). The key localised per engine stays per
    device. Bounded: passphrases rotated away by reloads are forgotten, not kept for good."""
    return service.hash_passphrase(*args)


class Authenticator:
    """A USM user's authentication: the passphrase hashed once (1 MB of hashing, ~10 ms),
    then per engine a cheap localisation and the HMAC of RFC 3414 6.3 / 7.3.

    Shared by the polling client and the trap receiver, which checks a trap's digest itself
    before anything is registered for the engine the trap names.
    """

    def __init__(self, protocol: str, passphrase: str):
        self._service = SnmpUSMSecurityModel.AUTH_SERVICES[AUTH_PROTOCOLS[protocol]]
        self._hash = HASHES[protocol]
        self.digest_length: int = self._service.digest_length
        self._ku = _hashed_passphrase(self._service, passphrase)

    def localize(self, engine_id: bytes) -> bytes:
        """The key localised to `engine_id` (RFC 3414 2.6)."""
        return self._service.localize_key(self._ku, univ.OctetString(engine_id)).asOctets()

    def digest(self, key: bytes, wire: bytes) -> bytes:
        """msgAuthenticationParameters for `wire` (its own digest octets zeroed)."""
        return hmac.new(key, wire, self._hash).digest()[: self.digest_length]

    def verify(self, key: bytes, data: bytes, message: V3Message) -> bool:
        """True if `message` (decoded from `data`) carries the right digest for `key`."""
        start, end = message.auth_at
        if end - start != self.digest_length:
            return False
        blank = data[:start] + bytes(end - start) + data[end:]
        return hmac.compare_digest(self.digest(key, blank), message.auth)


class _Resync(Exception):
    """The agent reported its clock or engine ID changed: send the request again."""


class _EngineChanged(AuthError):
    """Only unauthenticated reports of a new engine came for a request: rediscover then.

    A forged report must not make the client forget a working engine, so the report is first
    ignored (`Ignored`); only if the request then gets no authentic answer is it believed.
    """


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
        self._auth: Authenticator | None = None
        self._digest = 0
        self._priv = None
        self._flags = FLAG_REPORTABLE
        if settings.auth_protocol is not None and settings.auth_key is not None:
            # Hashing the passphrase is 1 MB of hashing: once, here, not in a poll.
            self._auth = Authenticator(settings.auth_protocol, settings.auth_key.get_secret_value())
            self._digest = self._auth.digest_length
            self._flags |= FLAG_AUTH
        if settings.priv_protocol != "none" and settings.priv_key is not None:
            self._priv = SnmpUSMSecurityModel.PRIV_SERVICES[PRIV_PROTOCOLS[settings.priv_protocol]]
            self._priv_ku = _hashed_passphrase(
                self._priv,
                AUTH_PROTOCOLS[settings.auth_protocol],
                settings.priv_key.get_secret_value(),
            )
            self._flags |= FLAG_PRIV
        self._peer: _Peer | None = None
        self._lock = asyncio.Lock()
        self._discovery_ids: set[int] = set()

    # ---- the wire ----------------------------------------------------------------------------

    def _decode(self, data: bytes) -> tuple[int, V3Message]:
        message = decode_v3(data)
        return message.msg_id, message

    def _open_answer(self, data: bytes, message: V3Message) -> tuple[V3Message, int, Response]:
        """Authenticate and decrypt an answer: (message, PDU type, PDU).

        Raises `Ignored` for what anyone could have sent (failed digests, unauthenticated
        reports to an authenticated request, absurd discovery answers): the request keeps
        waiting for the agent's own answer.
        """
        authentic = bool(message.flags & FLAG_AUTH)
        if authentic:
            self._authenticate(data, message)
        scoped = self._plaintext(message, authentic)
        try:
            _, tag, response = decode_scoped_pdu(scoped)
        except BerError as exc:
            if not authentic:
                raise Ignored("undecodable", Malformed(f"{self.where}: unreadable answer")) from exc
            hint = " (wrong priv_key?)" if message.encrypted else ""
            raise Malformed(f"{self.where}: unreadable scoped PDU{hint}: {exc}") from exc
        if message.msg_id in self._discovery_ids:
            self._check_discovery(message, tag)
        elif not authentic and self._auth is not None:
            raise Ignored("unauthenticated", self._unauthenticated_error(message, tag, response))
        elif tag == RESPONSE and self._priv is not None and not message.encrypted:
            # RFC 3412 7.2.10: an answer comes at the security level of its request
            error = AuthError(f"{self.where}: answer below the request's security level")
            raise Ignored("below_level", error)
        return message, tag, response

    def _authenticate(self, data: bytes, message: V3Message) -> None:
        """Check an answer's digest (and learn the clock it vouches for); `Ignored` if bad."""
        peer = self._peer
        if peer is None or message.engine_id != peer.engine_id or self._auth is None:
            error = AuthError(f"{self.where}: authenticated answer from an unknown engine")
            raise Ignored("unknown_engine", error)
        if not self._auth.verify(peer.auth_key, data, message):
            error = AuthError(f"{self.where}: answer failed authentication (wrong auth_key?)")
            raise Ignored("wrong_digest", error)
        if not usm_clock_ok(message.boots, message.time):
            raise Malformed(f"{self.where}: agent's engine boots/time out of RFC 3414 range")
        if message.boots > peer.boots or (message.boots == peer.boots and message.time > peer.time):
            peer.learn(message.boots, message.time)

    def _plaintext(self, message: V3Message, authentic: bool) -> bytes:
        """The ScopedPDU TLV of an answer, decrypted if it is encrypted."""
        if not message.encrypted:
            return message.data
        if not (authentic and message.flags & FLAG_PRIV and self._priv is not None):
            error = Malformed(f"{self.where}: encrypted answer without authentication")
            raise Ignored("unauthenticated", error)
        assert self._peer is not None  # authenticated, so a peer is known
        try:
            return self._priv.decrypt_data(
                self._peer.priv_key,
                (message.boots, message.time, univ.OctetString(message.priv)),
                univ.OctetString(message.data),
            )
        except Exception as exc:  # pysnmp raises its StatusInformation or a cipher error
            raise AuthError(f"{self.where}: cannot decrypt the answer") from exc

    def _check_discovery(self, message: V3Message, tag: int) -> None:
        """Take a discovery answer only with an engine ID and clock RFC 3411/3414 allow."""
        low, high = ENGINE_ID_SIZE
        if tag != REPORT or not low <= len(message.engine_id) <= high:
            error = Malformed(f"{self.where}: no engine ID in the answer to discovery")
            raise Ignored("bad_discovery", error)
        if not usm_clock_ok(message.boots, message.time):
            error = Malformed(f"{self.where}: discovery answer with boots/time out of range")
            raise Ignored("bad_discovery", error)

    def _unauthenticated_error(self, message: V3Message, tag: int, response: Response) -> PollError:
        """What an unauthenticated answer to an authenticated request would mean, if true."""
        if tag != REPORT:
            return AuthError(f"{self.where}: answer below the request's security level")
        name = report_name(response)
        peer = self._peer
        if name == "usmStatsUnknownEngineIDs" or (
            peer is not None and message.engine_id not in (b"", peer.engine_id)
        ):
            return _EngineChanged(f"{self.where}: the agent's engine changed ({name})")
        if name.startswith("usmStats"):
            return AuthError(f"{self.where}: SNMPv3 authentication failed: agent reports {name}")
        return PollError(f"{self.where}: agent reports {name}")

    # ---- engine discovery and requests -------------------------------------------------------

    async def _discover(self) -> _Peer:
        """Learn the agent's engine ID (and clock) from the report to an empty request."""
        async with self._lock:
            if self._peer is not None:
                return self._peer

            def build(msg_id: int) -> bytes:
                self._discovery_ids.add(msg_id)
                usm = encode_usm_parameters(b"", 0, 0, b"", b"", b"")
                scoped = encode_scoped_pdu(b"", b"", encode_pdu(GET, msg_id, []))
                return encode_v3(msg_id, MAX_MESSAGE, FLAG_REPORTABLE, usm, scoped)

            try:
                message, _, _ = await self._round_trip(build)
            finally:
                self._discovery_ids.clear()
            peer = _Peer(message.engine_id)
            peer.learn(message.boots, message.time)
            engine_id = univ.OctetString(message.engine_id)
            if self._auth is not None:
                peer.auth_key = self._auth.localize(message.engine_id)
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
        digest = self._auth.digest(peer.auth_key, wire)
        return wire[: end - self._digest] + digest + wire[end:]

    async def _exchange(
        self, oids: Sequence[Oid], max_repetitions: int | None, non_repeaters: int
    ) -> list[VarBind]:
        pdu_type = GET if max_repetitions is None else GET_BULK
        a, b = (0, 0) if max_repetitions is None else (non_repeaters, max_repetitions)
        for attempt in range(2):
            peer = self._peer or await self._discover()
            try:
                message, tag, response = await self._round_trip(
                    lambda msg_id, peer=peer: self._message(
                        peer, msg_id, encode_pdu(pdu_type, msg_id, list(oids), a, b)
                    )
                )
            except _EngineChanged:
                if attempt:
                    raise
                self._forget(peer)
                continue
            try:
                return self._result(peer, message, tag, response, retry=attempt == 0)
            except _Resync:
                continue
        raise AuthError(f"{self.where}: cannot synchronise with the agent's engine")

    def _forget(self, peer: _Peer) -> None:
        """Drop the engine `peer` so the next request discovers again (unless a concurrent
        request already has)."""
        if self._peer is peer:
            self._peer = None

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
            self._forget(peer)
            raise _Resync
        if name.startswith("usmStats"):
            raise AuthError(f"{self.where}: SNMPv3 authentication failed: agent reports {name}")
        raise PollError(f"{self.where}: agent reports {name}")

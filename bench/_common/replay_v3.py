"""SNMPv3 authPriv (SHA-256 + AES-128) for the replaying responders of the capacity bench.

A replay cannot resend a recorded v3 answer: its engine time, salt, ciphertext and digest are
bound to one request. But the scoped PDU inside is the same as a v2c answer's PDU, so a v3
responder can be an agent's USM layer around the v2c answer table (`replay_agents.record`):

- engine discovery (an unauthenticated request with no engine ID) gets the Report-PDU
  `usmStatsUnknownEngineIDs` with this agent's engine ID, boots and time (RFC 3414 4);
- a request is checked as an agent checks it: the engine ID is the one discovered, the time
  within the 150 s window, the user known (it names the recorded module, as the community
  does in v2c), the HMAC-SHA-256 digest right; its scoped PDU is decrypted (AES-128-CFB,
  RFC 3826), the answer looked up by the PDU after its request-id, then encrypted with a fresh
  salt and authenticated with the keys localised to the engine.

Each device gets an engine ID of its own, as real modules have: it is made from the address
and port the request came from, and the collector polls every device from a socket of its own.
So the collector's engine cache, key localisation and clock handling see N engines, not one.

The cryptography is the driver's (`usm.Authenticator`: passphrase hashing, localisation,
HMAC) and the `cryptography` package's AES; nothing here is a cipher of its own.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography 47+ keeps CFB among the "decrepit" modes (SNMP's AES is CFB128)
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from qkdtel.drivers.qkd_snmp.ber import (
    FLAG_AUTH,
    FLAG_PRIV,
    REPORT,
    BerError,
    _expect,
    _header,
    _integer,
    _tlv,
    decode_scoped_pdu,
    decode_v3,
    encode_oid,
    encode_scoped_pdu,
    encode_usm_parameters,
    encode_v3,
    octet_string,
)
from qkdtel.drivers.qkd_snmp.usm import MAX_MESSAGE, Authenticator

AUTH_PROTOCOL, PRIV_PROTOCOL = "sha256", "aes"
AUTH_PASSPHRASE, PRIV_PASSPHRASE = "capacity-bench-auth", "capacity-bench-priv"
"""The bench's own passphrases (loopback agents that exist for one run)."""
BOOTS = 1
TIME_WINDOW_S = 150
AES_KEY_BYTES = 16
ENGINE_PREFIX = b"\x80\x00\x1f\x88\x05"
"""RFC 3411 SnmpEngineID: Net-SNMP's enterprise number (8072), format 5 (octets follow)."""
UNKNOWN_ENGINE_IDS = (1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0)


def snmp_settings(module: str) -> dict[str, Any]:
    """The `snmp:` of a device answered with `module`'s recorded answers over v3 authPriv."""
    return {
        "version": "3",
        "user": module,
        "auth_protocol": AUTH_PROTOCOL,
        "auth_key": AUTH_PASSPHRASE,
        "priv_protocol": PRIV_PROTOCOL,
        "priv_key": PRIV_PASSPHRASE,
    }


def engine_id(client: tuple[str, int]) -> bytes:
    """The engine ID of the device the collector polls from `client` (address, port)."""
    return ENGINE_PREFIX + socket.inet_aton(client[0]) + client[1].to_bytes(2, "big")


def _cfb(key: bytes, boots: int, engine_time: int, salt: bytes) -> Cipher:
    """AES-128-CFB with RFC 3826's IV: boots, time, then the 8-octet salt."""
    iv = boots.to_bytes(4, "big") + engine_time.to_bytes(4, "big") + salt
    return Cipher(algorithms.AES(key), CFB(iv))


class V3Agent:
    """The USM side of one responder process: keys per engine, its clock, its salts."""

    def __init__(self, table: dict) -> None:
        self.table = table
        self._auth = Authenticator(AUTH_PROTOCOL, AUTH_PASSPHRASE)
        self._priv = Authenticator(AUTH_PROTOCOL, PRIV_PASSPHRASE)
        self._keys: dict[bytes, tuple[bytes, bytes]] = {}
        self._started = time.monotonic()
        self._salts = itertools.count(int.from_bytes(os.urandom(4), "big"))
        report = _tlv(0x30, _tlv(0x06, encode_oid(UNKNOWN_ENGINE_IDS)) + _tlv(0x41, b"\x01"))
        self._report_varbinds = _tlv(0x30, report)

    def keys(self, engine: bytes) -> tuple[bytes, bytes]:
        """(auth key, AES key) localised to `engine` (RFC 3414 2.6, RFC 3826 1.2)."""
        if engine not in self._keys:
            priv = self._priv.localize(engine)[:AES_KEY_BYTES]
            self._keys[engine] = (self._auth.localize(engine), priv)
        return self._keys[engine]

    def now(self) -> int:
        """snmpEngineTime: seconds since this responder started."""
        return int(time.monotonic() - self._started)

    def answer(self, request: bytes, client: tuple[str, int]) -> bytes:
        """The answer to one request; `ValueError`/`KeyError`/`BerError` for what an agent
        would refuse or a replay does not know (the caller counts and drops it)."""
        message = decode_v3(request)
        engine = engine_id(client)
        if not message.flags & FLAG_AUTH:
            if message.engine_id:
                raise ValueError("unauthenticated request to a known engine")
            return self._discovery(message.msg_id, message.data, engine)
        if message.engine_id != engine or not message.encrypted:
            raise ValueError("wrong engine, or not authPriv")
        if message.boots != BOOTS or abs(message.time - self.now()) > TIME_WINDOW_S:
            raise ValueError("not in the time window")
        auth_key, priv_key = self.keys(engine)
        if not self._auth.verify(auth_key, request, message):
            raise ValueError("wrong digest")
        decryptor = _cfb(priv_key, message.boots, message.time, message.priv).decryptor()
        scoped = decryptor.update(message.data) + decryptor.finalize()
        context, tag, request_id, rest = _split_scoped(scoped)
        reply_tag, reply_rest = self.table[message.user, tag, rest]
        pdu = _tlv(reply_tag, _integer(request_id) + reply_rest)
        return self._seal(message.msg_id, message.user, engine, context, pdu)

    def _discovery(self, msg_id: int, scoped: bytes, engine: bytes) -> bytes:
        """The Report-PDU that tells the collector this agent's engine ID, boots and time."""
        _, _, pdu = decode_scoped_pdu(scoped)
        body = _integer(pdu.request_id) + _integer(0) + _integer(0) + self._report_varbinds
        usm = encode_usm_parameters(engine, BOOTS, self.now(), b"", b"", b"")
        scoped_report = encode_scoped_pdu(engine, b"", _tlv(REPORT, body))
        return encode_v3(msg_id, MAX_MESSAGE, 0, usm, scoped_report)

    def _seal(self, msg_id: int, user: bytes, engine: bytes, context: bytes, pdu: bytes) -> bytes:
        """`pdu` in a scoped PDU, encrypted with a fresh salt, the message authenticated."""
        auth_key, priv_key = self.keys(engine)
        engine_time = self.now()
        salt = (next(self._salts) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        encryptor = _cfb(priv_key, BOOTS, engine_time, salt).encryptor()
        scoped = encode_scoped_pdu(engine, context, pdu)
        data = octet_string(encryptor.update(scoped) + encryptor.finalize())
        length = self._auth.digest_length
        usm = encode_usm_parameters(engine, BOOTS, engine_time, user, bytes(length), salt)
        wire = encode_v3(msg_id, MAX_MESSAGE, FLAG_AUTH | FLAG_PRIV, usm, data)
        end = len(wire) - len(data) - len(octet_string(salt))  # the digest ends there
        return wire[: end - length] + self._auth.digest(auth_key, wire) + wire[end:]


def _split_scoped(scoped: bytes) -> tuple[bytes, int, int, bytes]:
    """(contextName, PDU tag, request-id, the PDU after its request-id) of a ScopedPDU."""
    pos, end = _expect(scoped, 0, len(scoped), 0x30)
    _, _, engine_end = _header(scoped, pos, end)
    _, name_start, name_end = _header(scoped, engine_end, end)
    tag, p_start, p_end = _header(scoped, name_end, end)
    _, r_start, r_end = _header(scoped, p_start, p_end)
    request_id = int.from_bytes(scoped[r_start:r_end], "big", signed=True)
    return scoped[name_start:name_end], tag, request_id, scoped[r_end:p_end]


def serve_v3(sock: socket.socket, table: dict, missed: Any) -> None:
    """A v3 responder's loop: answer what the table knows; count (and drop) the rest."""
    agent = V3Agent(table)
    while True:
        request, client = sock.recvfrom(65535)
        try:
            reply = agent.answer(request, client)
        except (BerError, KeyError, ValueError):
            with missed.get_lock():
                missed.value += 1
            continue
        sock.sendto(reply, client)

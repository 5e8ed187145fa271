"""SNMPv3 (USM) through pysnmp: one `SnmpEngine` and one connected socket per agent.

The engine is configured once (user, target parameters, target address) and requests go
straight to the RFC 3413 command generators with pre-built OIDs, skipping what pysnmp's
high-level API redoes per request (local-configuration bookkeeping, MIB lookups).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.proto import errind

from qkdtel.drivers.qkd_snmp.ber import BerError, from_pyasn1
from qkdtel.drivers.qkd_snmp.client import Oid, SnmpClient, VarBind, connect_udp, socket_error
from qkdtel.drivers.qkd_snmp.options import SnmpSettings
from qkdtel.errors import AuthError, DeviceTimeout, Malformed, PollError

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
    "aes192": config.USM_PRIV_CFB192_AES,
    "aes256": config.USM_PRIV_CFB256_AES,
}

# What the agent (or our own USM) says when credentials do not match. None of them carries a key.
_AUTH_INDICATIONS = (
    errind.UnknownUserName,
    errind.UnknownSecurityName,
    errind.WrongDigest,
    errind.AuthenticationFailure,
    errind.AuthenticationError,
    errind.DecryptionError,
    errind.UnsupportedSecurityLevel,
    errind.NotInTimeWindow,
)


def add_usm_user(
    engine: SnmpEngine, settings: SnmpSettings, engine_id: bytes | None = None
) -> None:
    """Register the settings' SNMPv3 user on `engine` (for the agent `engine_id`, if given)."""
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


class _AgentSocket:
    """Mixin for pysnmp's asyncio UDP transports: the socket is connected to the agent.

    `error_received` is the asyncio hook through which a connected datagram socket reports
    ICMP errors (ECONNREFUSED, EHOSTUNREACH...); it is forwarded to the client.
    """

    def __init__(self, on_error: Any):
        super().__init__()  # type: ignore[call-arg]
        self._on_error = on_error

    def send_message(self, outgoingMessage: bytes, transportAddress: Any) -> None:
        """Send to the connected peer (the address is implied by the socket)."""
        transport = self.transport  # type: ignore[attr-defined]
        if transport is not None:
            transport.sendto(outgoingMessage)

    def error_received(self, exc: Exception) -> None:
        self._on_error(exc)


class _AgentUdp(_AgentSocket, udp.UdpAsyncioTransport):
    """IPv4 socket connected to the agent."""


class _AgentUdp6(_AgentSocket, udp6.Udp6AsyncioTransport):
    """IPv6 socket connected to the agent."""


class UsmClient(SnmpClient):
    """SNMPv3 requests through one pysnmp engine reused for every poll."""

    _TARGET = "agent"

    def __init__(self, host: str, port: int, settings: SnmpSettings):
        super().__init__(host, port, settings)
        self._engine = SnmpEngine()  # ~50 ms of MIB loading: here, not inside a poll
        add_usm_user(self._engine, settings)
        config.add_target_parameters(
            self._engine, "params", settings.user, settings.security_level, 3
        )
        self._transport: _AgentSocket | None = None
        self._open_lock = asyncio.Lock()
        self._pending: set[asyncio.Future] = set()
        self._get = cmdgen.GetCommandGenerator()
        self._bulk = cmdgen.BulkCommandGeneratorSingleRun()
        self._context = settings.context.encode()
        # The last line of defence against a request pysnmp never completes: its own timer
        # normally fires after request_timeout * (retries + 1); engine discovery may double it.
        self._deadline = 2 * settings.request_timeout * (settings.retries + 1) + 1.0

    async def _open(self) -> None:
        """Connect the socket and give it to the engine (first request only)."""
        async with self._open_lock:
            if self._transport is not None:
                return
            transport, sockaddr = await connect_udp(
                self.where, self.host, self.port, self._make_socket
            )
            domain = udp6.DOMAIN_NAME if isinstance(transport, _AgentUdp6) else udp.DOMAIN_NAME
            config.add_transport(self._engine, domain, transport)
            config.add_target_address(
                self._engine,
                self._TARGET,
                domain,
                sockaddr[:2],
                "params",
                # RFC 3413 TimeInterval: hundredths of a second
                timeout=self.settings.request_timeout * 100,
                retryCount=self.settings.retries,
            )
            self._transport = transport

    def _make_socket(self, family: int) -> Any:
        return (_AgentUdp6 if family == socket.AF_INET6 else _AgentUdp)(self._fail_pending)

    def _fail_pending(self, exc: Exception) -> None:
        error = socket_error(self.where, exc)
        for future in self._pending:
            if not future.done():
                future.set_exception(error)

    def _on_response(
        self,
        engine: SnmpEngine,
        handle: int,
        indication: errind.ErrorIndication | None,
        status: Any,
        index: Any,
        varbinds: Sequence[Any],
        future: asyncio.Future,
    ) -> None:
        if future.done():  # already failed (ICMP error, deadline); pysnmp finished late
            return
        if indication:
            future.set_exception(self._indication_error(indication))
            return
        try:
            answer = [(tuple(oid), from_pyasn1(value)) for oid, value in varbinds]
        except BerError as exc:
            future.set_exception(Malformed(f"{self.where}: {exc}"))
            return
        if status:
            future.set_exception(self.status_error(int(status), int(index), answer))
        else:
            future.set_result(answer)

    def _indication_error(self, indication: errind.ErrorIndication) -> PollError:
        if isinstance(indication, errind.RequestTimedOut):
            return DeviceTimeout(
                f"{self.where}: no answer within {self.settings.request_timeout:g}s "
                f"x {self.settings.retries + 1} attempt(s)"
            )
        if isinstance(indication, _AUTH_INDICATIONS):
            return AuthError(f"{self.where}: SNMPv3 authentication failed: {indication}")
        return PollError(f"{self.where}: SNMP error: {indication}")

    async def _exchange(
        self, oids: Sequence[Oid], max_repetitions: int | None, non_repeaters: int
    ) -> list[VarBind]:
        if self._transport is None:
            await self._open()
        varbinds = [(univ.ObjectIdentifier(oid), univ.Null("")) for oid in oids]
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.add(future)
        engine, target, context = self._engine, self._TARGET, self._context
        try:
            if max_repetitions is None:
                self._get.send_varbinds(
                    engine, target, None, context, varbinds, self._on_response, future
                )
            else:
                self._bulk.send_varbinds(
                    engine, target, None, context, non_repeaters, max_repetitions, varbinds,
                    self._on_response, future,
                )  # fmt: skip
            return await asyncio.wait_for(future, self._deadline)
        except TimeoutError:
            raise DeviceTimeout(f"{self.where}: no answer within {self._deadline:g}s") from None
        finally:
            self._pending.discard(future)

    async def aclose(self) -> None:
        """Close the socket and stop the engine's timer."""
        for future in self._pending:
            future.cancel()
        if self._transport is not None:
            self._engine.close_dispatcher()
            self._transport.close_transport()  # type: ignore[attr-defined]
            config.delete_target_address(self._engine, self._TARGET)
            self._transport = None

"""A lean SNMP manager for one agent: GET and GETBULK on raw OIDs, errors mapped to PollError.

Why not pysnmp's high-level API (`get_cmd`, `bulk_walk_cmd`): per request it re-runs the
local-configuration bookkeeping, converts every varbind through the MIB view, and it cannot tell
"port closed" from "no answer". A poller pays that on every device every few seconds, so this
client configures one `SnmpEngine` and one UDP socket per agent once, then sends pre-built
OIDs through the RFC 3413 command generators and hands back the raw values.

The UDP socket is *connected* to the agent: the kernel then reports ICMP port/host unreachable
as an error on the socket (it stays silent for unconnected UDP sockets), which lets a closed
port fail fast as `Refused` instead of waiting for the timeout. The price: an agent that
answers from another address than the one polled is not heard (rare; see README.md).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Sequence
from typing import Any

from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.proto import errind
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

from qkdtel.drivers.qkd_snmp.options import SnmpSettings
from qkdtel.errors import AuthError, DeviceTimeout, Malformed, PollError, Refused

Oid = tuple[int, ...]
VarBind = tuple[Oid, Any]

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
    errind.UnknownCommunityName,
    errind.NotInTimeWindow,
)
_AUTH_STATUSES = {"authorizationError", "noAccess"}
_MISSING = (NoSuchObject, NoSuchInstance)


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


def is_missing(value: Any) -> bool:
    """True for the noSuchObject / noSuchInstance exceptions a GET answers for absent objects."""
    return isinstance(value, _MISSING)


class _AgentSocket:
    """Mixin for pysnmp's asyncio UDP transports: one socket connected to one agent.

    `error_received` is the asyncio hook through which a connected datagram socket reports
    ICMP errors (ECONNREFUSED, EHOSTUNREACH...); it is forwarded to the client.
    """

    def __init__(self, remote: tuple, on_error: Any):
        super().__init__()  # type: ignore[call-arg]
        self._remote = remote
        self._on_error = on_error

    async def connect(self) -> None:
        """Create the socket (the asyncio way, so failures raise here and are not lost)."""
        await self.loop.create_datagram_endpoint(  # type: ignore[attr-defined]
            lambda: self,
            remote_addr=self._remote,
            family=self.SOCK_FAMILY,  # type: ignore[attr-defined]
        )

    def send_message(self, outgoingMessage: bytes, transportAddress: Any) -> None:
        """Send to the connected peer (the address is implied by the socket)."""
        transport = self.transport  # type: ignore[attr-defined]
        if transport is not None:
            transport.sendto(outgoingMessage)

    def error_received(self, exc: Exception) -> None:
        """ICMP error on the connected socket: the agent's port or host is unreachable."""
        self._on_error(exc)


class _AgentUdp(_AgentSocket, udp.UdpAsyncioTransport):
    """IPv4 socket connected to the agent."""


class _AgentUdp6(_AgentSocket, udp6.Udp6AsyncioTransport):
    """IPv6 socket connected to the agent."""


class SnmpClient:
    """GET and GETBULK against one SNMP agent, reusing one engine and one socket.

    Raises only `PollError` subclasses; their messages name the agent, never a credential.
    """

    _TARGET = "agent"

    def __init__(self, host: str, port: int, settings: SnmpSettings):
        self.host = host
        self.port = port
        self.settings = settings
        self._engine = SnmpEngine()  # ~50 ms of MIB loading: here, not inside a poll
        if settings.version == "3":
            add_usm_user(self._engine, settings)
            params = (settings.user, settings.security_level, 3)
        else:
            assert settings.community is not None
            config.add_v1_system(self._engine, "community", settings.community.get_secret_value())
            params = ("community", "noAuthNoPriv", 1)
        config.add_target_parameters(self._engine, "params", *params)
        self._transport: _AgentSocket | None = None
        self._open_lock = asyncio.Lock()
        self._pending: set[asyncio.Future] = set()
        self._get = cmdgen.GetCommandGenerator()
        self._bulk = cmdgen.BulkCommandGeneratorSingleRun()
        self._context = settings.context.encode()
        # The last line of defence against a request pysnmp never completes: its own timer
        # normally fires after request_timeout * (retries + 1); v3 discovery adds round trips.
        attempts = settings.retries + 1
        self._deadline = settings.request_timeout * attempts * (2 if settings.version == "3" else 1)
        self._deadline += 1.0

    @property
    def where(self) -> str:
        """The agent's address as shown in error messages."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def _open(self) -> SnmpEngine:
        """Resolve the agent's address and connect the socket (first request only)."""
        async with self._open_lock:
            if self._transport is not None:
                return self._engine
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            except socket.gaierror as exc:
                raise Refused(f"{self.where}: cannot resolve host: {exc.strerror}") from None
            family, _, _, _, sockaddr = infos[0]
            cls, domain = (
                (_AgentUdp6, udp6.DOMAIN_NAME)
                if family == socket.AF_INET6
                else (_AgentUdp, udp.DOMAIN_NAME)
            )
            transport = cls(sockaddr, self._fail_pending)
            try:
                await transport.connect()
            except OSError as exc:
                raise Refused(f"{self.where}: {exc.strerror or exc}") from None
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
            return self._engine

    def _fail_pending(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError):
            error: PollError = Refused(f"{self.where}: port unreachable (connection refused)")
        elif isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            error = Refused(f"{self.where}: {exc.strerror}")
        else:
            error = PollError(f"{self.where}: socket error: {exc}")
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
        elif status:
            future.set_exception(self._status_error(status, index, varbinds))
        else:
            future.set_result([(tuple(oid), value) for oid, value in varbinds])

    def _indication_error(self, indication: errind.ErrorIndication) -> PollError:
        if isinstance(indication, errind.RequestTimedOut):
            hint = " (wrong community, or agent down)" if self.settings.version == "2c" else ""
            return DeviceTimeout(
                f"{self.where}: no answer within {self.settings.request_timeout:g}s "
                f"x {self.settings.retries + 1} attempt(s){hint}"
            )
        if isinstance(indication, _AUTH_INDICATIONS):
            return AuthError(f"{self.where}: SNMPv3 authentication failed: {indication}")
        return PollError(f"{self.where}: SNMP error: {indication}")

    def _status_error(self, status: Any, index: Any, varbinds: Sequence[Any]) -> PollError:
        name = status.prettyPrint() if hasattr(status, "prettyPrint") else str(status)
        position = int(index) - 1
        at = f" at {varbinds[position][0]}" if 0 <= position < len(varbinds) else ""
        if name in _AUTH_STATUSES:
            return AuthError(f"{self.where}: agent refused access ({name}){at}")
        return PollError(f"{self.where}: agent answered error-status {name}{at}")

    async def _request(
        self,
        varbinds: Sequence[tuple[univ.ObjectIdentifier, univ.Null]],
        max_repetitions: int | None,
        non_repeaters: int = 0,
    ) -> list[VarBind]:
        engine = self._engine if self._transport is not None else await self._open()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.add(future)
        try:
            if max_repetitions is None:
                self._get.send_varbinds(
                    engine,
                    self._TARGET,
                    None,
                    self._context,
                    varbinds,
                    self._on_response,
                    future,
                )
            else:
                self._bulk.send_varbinds(
                    engine,
                    self._TARGET,
                    None,
                    self._context,
                    non_repeaters,
                    max_repetitions,
                    varbinds,
                    self._on_response,
                    future,
                )
            return await asyncio.wait_for(future, self._deadline)
        except TimeoutError:
            raise DeviceTimeout(f"{self.where}: no answer within {self._deadline:g}s") from None
        finally:
            self._pending.discard(future)

    async def get(self, oids: Sequence[Oid]) -> list[Any]:
        """Values of the given instances, in order; absent ones come back as `is_missing`."""
        varbinds = [(univ.ObjectIdentifier(oid), univ.Null("")) for oid in oids]
        answer = await self._request(varbinds, None)
        if len(answer) != len(oids):
            raise Malformed(f"{self.where}: GET of {len(oids)} objects answered {len(answer)}")
        return [value for _, value in answer]

    async def walk(
        self, columns: Sequence[Oid], max_repetitions: int, last_index: Oid | None = None
    ) -> list[list[VarBind]]:
        """All instances of the given table columns, walked together with GETBULK.

        Returns per column the `(index, value)` pairs (index = the OID suffix after the
        column). A column leaves the request as soon as the agent moves past it, and the walk
        ends when every column has. That costs one row beyond the table, unless `last_index`
        (the table's last row at the previous walk) is given: the first request then also asks,
        as a non-repeater, what follows that row in the first column; if nothing does, every
        column that has reached that row is complete. (A column with rows past the first
        column's last one would be cut short: tables whose first column is sparse need none.)
        """
        found: list[list[VarBind]] = [[] for _ in columns]
        cursor = list(columns)
        active = list(range(len(columns)))
        probe = last_index
        while active:
            request = [(univ.ObjectIdentifier(cursor[i]), univ.Null("")) for i in active]
            if probe is not None:
                request.insert(0, (univ.ObjectIdentifier(columns[0] + probe), univ.Null("")))
            answer = await self._request(request, max_repetitions, int(probe is not None))
            if not answer:
                raise Malformed(f"{self.where}: empty answer to GETBULK")
            ended_at = None
            if probe is not None:
                (oid, value), answer = answer[0], answer[1:]
                if isinstance(value, EndOfMibView) or oid[: len(columns[0])] != columns[0]:
                    ended_at = probe  # no row after `probe`: the table ends there
                probe = None
            width = len(active)
            finished: set[int] = set()
            for position, (oid, value) in enumerate(answer):
                column = active[position % width]
                if column in finished:
                    continue
                prefix = columns[column]
                if isinstance(value, EndOfMibView) or oid[: len(prefix)] != prefix:
                    finished.add(column)
                    continue
                if oid <= cursor[column]:
                    raise Malformed(f"{self.where}: GETBULK answer not increasing at {oid}")
                found[column].append((oid[len(prefix) :], value))
                cursor[column] = oid
            if ended_at is not None:
                finished.update(i for i in active if cursor[i][len(columns[i]) :] >= ended_at)
            active = [i for i in active if i not in finished]
        return found

    async def aclose(self) -> None:
        """Close the socket and stop the engine's timer."""
        for future in self._pending:
            future.cancel()
        if self._transport is not None:
            self._engine.close_dispatcher()
            self._transport.close_transport()  # type: ignore[attr-defined]
            config.delete_target_address(self._engine, self._TARGET)
            self._transport = None

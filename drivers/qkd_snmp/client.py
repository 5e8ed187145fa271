"""SNMP managers for one agent: GET and GETBULK on raw OIDs, errors mapped to PollError.

Polling is mostly encoding requests and decoding answers, and pysnmp does that through
pyasn1's schema-driven codec at about 60 us per varbind. So the driver speaks SNMP itself on
the wire (ber.py): requests are pre-encoded bytes, answers decode straight into Python
values. `QkdSnmpDriver` picks the version (driver.py, `make_client`):
- `V2cClient` (v2c.py): community, request-id matching, resends.
- `UsmClient` (usm.py): SNMPv3 with USM; the cryptography (key localisation, privacy
  ciphers) is pysnmp's own, reused as is.

Both are `UdpClient`s: one UDP socket *connected* to the agent, requests and answers matched
by id, resends. Connected, because the kernel then reports ICMP port/host unreachable as an
error on the socket (it stays silent for unconnected UDP sockets), so a closed port fails
fast as `Refused` instead of after the timeout. The price: an agent that answers from
another address than the one polled is not heard (rare; see README.md).

Values come back plain (see ber.py): int, bytes, OID tuple, or an `SnmpException`.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from qkdtel.drivers.qkd_snmp.ber import (
    END_OF_MIB_VIEW,
    ERROR_STATUS,
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
    BerError,
)
from qkdtel.drivers.qkd_snmp.options import SnmpSettings, join_address
from qkdtel.sdk import AuthError, DeviceTimeout, Malformed, PollError, Refused

Oid = tuple[int, ...]
VarBind = tuple[Oid, Any]

P = TypeVar("P", bound=asyncio.BaseProtocol)
A = TypeVar("A")  # what a UdpClient's request is answered with

_AUTH_STATUSES = {"authorizationError", "noAccess"}


def is_missing(value: Any) -> bool:
    """True for the noSuchObject / noSuchInstance a GET answers for absent objects."""
    return value is NO_SUCH_OBJECT or value is NO_SUCH_INSTANCE


def socket_error(where: str, exc: Exception) -> PollError:
    """The poll error for an error the connected socket reported (ICMP, mostly)."""
    if isinstance(exc, ConnectionRefusedError):
        return Refused(f"{where}: port unreachable (connection refused)")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Refused(f"{where}: {exc.strerror}")
    return PollError(f"{where}: socket error: {exc}")


async def connect_udp(
    where: str, host: str, port: int, make: Callable[[int], P]
) -> tuple[P, tuple]:
    """Resolve the agent, connect a datagram endpoint to it; (protocol, agent address).

    `make(family)` builds the protocol for the address family the agent resolved to.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise Refused(f"{where}: cannot resolve host: {exc.strerror}") from exc
    family, _, _, _, sockaddr = infos[0]
    protocol = make(family)
    try:  # asyncio wants (host, port) even for IPv6, whose sockaddr has 4 fields
        await loop.create_datagram_endpoint(
            lambda: protocol, remote_addr=sockaddr[:2], family=family
        )
    except OSError as exc:
        raise Refused(f"{where}: {exc.strerror or exc}") from exc
    return protocol, sockaddr


class SnmpClient:
    """GET and a column-wise GETBULK walk against one agent, whatever the protocol version.

    Subclasses move one request and its answer (`_exchange`). Raises only `PollError`
    subclasses; their messages name the agent, never a credential.
    """

    def __init__(self, host: str, port: int, settings: SnmpSettings):
        self.host = host
        self.port = port
        self.settings = settings

    @property
    def where(self) -> str:
        """The agent's address as shown in error messages."""
        return join_address(self.host, self.port)

    async def _exchange(
        self, oids: Sequence[Oid], max_repetitions: int | None, non_repeaters: int
    ) -> list[VarBind]:
        """Send a GET (`max_repetitions` None) or GETBULK and return the answer's varbinds."""
        raise NotImplementedError

    async def _request(
        self, oids: Sequence[Oid], max_repetitions: int | None = None, non_repeaters: int = 0
    ) -> list[VarBind]:
        """Every request of a poll goes through here (one place to count or trace them)."""
        return await self._exchange(oids, max_repetitions, non_repeaters)

    def status_error(self, status: int, index: int, varbinds: Sequence[VarBind]) -> PollError:
        """The poll error for a non-zero error-status in an answer."""
        name = ERROR_STATUS[status] if 0 <= status < len(ERROR_STATUS) else str(status)
        at = f" at {varbinds[index - 1][0]}" if 0 < index <= len(varbinds) else ""
        if name in _AUTH_STATUSES:
            return AuthError(f"{self.where}: agent refused access ({name}){at}")
        return PollError(f"{self.where}: agent answered error-status {name}{at}")

    async def get(self, oids: Sequence[Oid]) -> list[Any]:
        """Values of the given instances, in order; absent ones come back as `is_missing`."""
        answer = await self._request(oids)
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
            request = [cursor[i] for i in active]
            if probe is not None:
                request.insert(0, columns[0] + probe)
            answer = await self._request(request, max_repetitions, int(probe is not None))
            if not answer:
                raise Malformed(f"{self.where}: empty answer to GETBULK")
            ended_at = None
            if probe is not None:
                (oid, value), answer = answer[0], answer[1:]
                if value is END_OF_MIB_VIEW or oid[: len(columns[0])] != columns[0]:
                    ended_at = probe  # no row after `probe`: the table ends there
                probe = None
            width = len(active)
            finished: set[int] = set()
            for position, (oid, value) in enumerate(answer):
                column = active[position % width]
                if column in finished:
                    continue
                prefix = columns[column]
                if value is END_OF_MIB_VIEW or oid[: len(prefix)] != prefix:
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
        """Release the socket (and engine)."""


class _Socket(asyncio.DatagramProtocol):
    """The connected UDP socket: answers go to the client by request id, errors to all."""

    def __init__(self, client: UdpClient[Any]):
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.client._answer(data)

    def error_received(self, exc: Exception) -> None:
        self.client._fail_all(socket_error(self.client.where, exc))


class Ignored(Exception):
    """An answer to drop without failing its request (forged, or below its security level).

    `error` is what the request ends in if no acceptable answer comes before the timeout, so
    a genuine refusal (e.g. a wrong key's report) is still named, one timeout later.
    """

    def __init__(self, reason: str, error: PollError):
        super().__init__(reason)
        self.reason = reason
        self.error = error


class UdpClient(SnmpClient, Generic[A]):
    """Requests over one connected UDP socket reused for every poll, answers matched to their
    request by id.

    Retries follow the usual manager practice (Net-SNMP's): a resend reuses the id, so a late
    answer to an earlier attempt still completes the request. Subclasses read an answer's id
    (`_decode`) and turn the answer into what its request returns (`_open_answer`).
    """

    timeout_hint = ""  # appended to the timeout error's message

    def __init__(self, host: str, port: int, settings: SnmpSettings):
        super().__init__(host, port, settings)
        self._socket: _Socket | None = None
        self._open_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[A]] = {}
        self._rejected: dict[int, PollError] = {}  # by request id: the last answer ignored
        self._next_id = random.randrange(1, 1 << 30)
        self.ignored: dict[str, int] = {}
        """Datagrams dropped without failing a request, by reason (see `_answer`)."""

    def _decode(self, data: bytes) -> tuple[int, Any]:
        """(the id it answers, the decoded answer); raises BerError."""
        raise NotImplementedError

    def _open_answer(self, data: bytes, decoded: Any) -> A:
        """What the request gets from its answer; raises PollError."""
        raise NotImplementedError

    async def _connected(self) -> _Socket:
        async with self._open_lock:
            if self._socket is None:
                self._socket, _ = await connect_udp(
                    self.where, self.host, self.port, lambda _family: _Socket(self)
                )
            return self._socket

    def _answer(self, data: bytes) -> None:
        """A datagram from the agent's address: complete the request it answers.

        UDP source addresses are forged at will, so a datagram that does not decode, answers
        no request in flight, or that `_open_answer` rejects as `Ignored` only costs a counter
        (`ignored`): it must not fail the requests a genuine answer is still on its way to.
        """
        try:
            request_id, decoded = self._decode(data)
        except BerError:
            self._ignore("undecodable")
            return
        future = self._pending.get(request_id)
        if future is None or future.done():
            self._ignore("unmatched")  # also a late duplicate of an answer already taken
            return
        try:
            future.set_result(self._open_answer(data, decoded))
        except Ignored as exc:
            self._ignore(exc.reason)
            self._rejected[request_id] = exc.error
        except PollError as exc:
            future.set_exception(exc)

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def _fail_all(self, error: PollError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def _round_trip(self, build: Callable[[int], bytes]) -> A:
        """Send `build(request_id)` and resend it on timeout; the answer to that id."""
        sock = self._socket or await self._connected()
        request_id = self._next_id
        self._next_id = request_id % 0x7FFFFFFF + 1
        wire = build(request_id)
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        settings = self.settings
        try:
            for _ in range(settings.retries + 1):
                assert sock.transport is not None
                sock.transport.sendto(wire)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), settings.request_timeout)
                except TimeoutError:
                    continue
            rejected = self._rejected.get(request_id)
            if rejected is not None:
                raise rejected
            raise DeviceTimeout(
                f"{self.where}: no answer within {settings.request_timeout:g}s "
                f"x {settings.retries + 1} attempt(s){self.timeout_hint}"
            )
        finally:
            del self._pending[request_id]
            self._rejected.pop(request_id, None)
            if not future.done():
                future.cancel()

    async def aclose(self) -> None:
        """Close the socket."""
        self._fail_all(PollError(f"{self.where}: client closed"))
        if self._socket is not None and self._socket.transport is not None:
            self._socket.transport.close()
        self._socket = None

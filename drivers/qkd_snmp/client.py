"""SNMP managers for one agent: GET and GETBULK on raw OIDs, errors mapped to PollError.

Polling is mostly encoding requests and decoding answers, and pysnmp does that through
pyasn1's schema-driven codec at about 60 us per varbind. So the driver speaks SNMP itself on
the wire (ber.py): requests are pre-encoded bytes, answers decode straight into Python
values. `make_client` picks the version:
- `V2cClient` (v2c.py): community, request-id matching, resends.
- `UsmClient` (usm.py): SNMPv3 with USM; the cryptography (key localisation, privacy
  ciphers) is pysnmp's own, reused as is.

Both use one UDP socket *connected* to the agent: the kernel then reports ICMP port/host
unreachable as an error on the socket (it stays silent for unconnected UDP sockets), so a
closed port fails fast as `Refused` instead of after the timeout. The price: an agent that
answers from another address than the one polled is not heard (rare; see README.md).

Values come back plain (see ber.py): int, bytes, OID tuple, or an `SnmpException`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from qkdtel.drivers.qkd_snmp.ber import (
    END_OF_MIB_VIEW,
    ERROR_STATUS,
    NO_SUCH_INSTANCE,
    NO_SUCH_OBJECT,
)
from qkdtel.drivers.qkd_snmp.options import SnmpSettings
from qkdtel.errors import AuthError, Malformed, PollError, Refused

Oid = tuple[int, ...]
VarBind = tuple[Oid, Any]

P = TypeVar("P", bound=asyncio.BaseProtocol)

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
        raise Refused(f"{where}: cannot resolve host: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    protocol = make(family)
    try:
        await loop.create_datagram_endpoint(lambda: protocol, remote_addr=sockaddr, family=family)
    except OSError as exc:
        raise Refused(f"{where}: {exc.strerror or exc}") from None
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
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

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


def make_client(host: str, port: int, settings: SnmpSettings) -> SnmpClient:
    """The client for the settings' SNMP version."""
    if settings.version == "3":
        from qkdtel.drivers.qkd_snmp.usm import UsmClient

        return UsmClient(host, port, settings)
    from qkdtel.drivers.qkd_snmp.v2c import V2cClient

    return V2cClient(host, port, settings)

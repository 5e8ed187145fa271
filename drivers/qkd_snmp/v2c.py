"""SNMPv2c without pysnmp: pre-encoded requests, answers decoded straight to Python values.

Retries follow the usual manager practice (Net-SNMP's): a resend reuses the request-id, so a
late answer to an earlier attempt still completes the request.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from qkdtel.drivers.qkd_snmp.ber import GET, GET_BULK, BerError, decode_response, encode_request
from qkdtel.drivers.qkd_snmp.client import Oid, SnmpClient, VarBind, connect_udp, socket_error
from qkdtel.drivers.qkd_snmp.options import SnmpSettings
from qkdtel.errors import DeviceTimeout, Malformed, PollError


class _Socket(asyncio.DatagramProtocol):
    """The connected UDP socket: answers go to the client by request-id, errors to all."""

    def __init__(self, client: V2cClient):
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.client._answer(data)

    def error_received(self, exc: Exception) -> None:
        self.client._fail_all(socket_error(self.client.where, exc))


class V2cClient(SnmpClient):
    """SNMPv2c requests over one connected UDP socket reused for every poll."""

    def __init__(self, host: str, port: int, settings: SnmpSettings):
        super().__init__(host, port, settings)
        assert settings.community is not None
        self._community = settings.community.get_secret_value().encode()
        self._socket: _Socket | None = None
        self._open_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[list[VarBind]]] = {}
        self._next_id = random.randrange(1, 1 << 30)

    async def _open(self) -> _Socket:
        async with self._open_lock:
            if self._socket is None:
                self._socket, _ = await connect_udp(
                    self.where, self.host, self.port, lambda _family: _Socket(self)
                )
            return self._socket

    def _answer(self, data: bytes) -> None:
        """A datagram from the agent: complete the request it answers."""
        try:
            response = decode_response(data)
        except BerError as exc:
            # Only the agent can reach a connected socket: it sent something unreadable.
            self._fail_all(Malformed(f"{self.where}: undecodable answer: {exc}"))
            return
        future = self._pending.get(response.request_id)
        if future is None or future.done():
            return  # a late duplicate of an answer already taken
        if response.error_status:
            future.set_exception(
                self.status_error(response.error_status, response.error_index, response.varbinds)
            )
        else:
            future.set_result(response.varbinds)

    def _fail_all(self, error: PollError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def _exchange(
        self, oids: Sequence[Oid], max_repetitions: int | None, non_repeaters: int
    ) -> list[VarBind]:
        sock = self._socket or await self._open()
        request_id = self._next_id
        self._next_id = request_id % 0x7FFFFFFF + 1
        if max_repetitions is None:
            message = encode_request(self._community, GET, request_id, list(oids))
        else:
            message = encode_request(
                self._community, GET_BULK, request_id, list(oids), non_repeaters, max_repetitions
            )
        future: asyncio.Future[list[VarBind]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        settings = self.settings
        try:
            for _ in range(settings.retries + 1):
                assert sock.transport is not None
                sock.transport.sendto(message)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), settings.request_timeout)
                except TimeoutError:
                    continue
            raise DeviceTimeout(
                f"{self.where}: no answer within {settings.request_timeout:g}s "
                f"x {settings.retries + 1} attempt(s) (wrong community, or agent down)"
            )
        finally:
            del self._pending[request_id]
            if not future.done():
                future.cancel()

    async def aclose(self) -> None:
        """Close the socket."""
        self._fail_all(PollError(f"{self.where}: client closed"))
        if self._socket is not None and self._socket.transport is not None:
            self._socket.transport.close()
        self._socket = None

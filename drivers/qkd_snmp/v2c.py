"""SNMPv2c without pysnmp: pre-encoded requests, answers decoded straight to Python values.

Retries, request-id matching and the socket are `UdpClient`'s (client.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from qkdtel.drivers.qkd_snmp.ber import GET, GET_BULK, Response, decode_response, encode_request
from qkdtel.drivers.qkd_snmp.client import Oid, UdpClient, VarBind
from qkdtel.drivers.qkd_snmp.options import SnmpSettings


class V2cClient(UdpClient[list[VarBind]]):
    """SNMPv2c requests over one connected UDP socket reused for every poll."""

    timeout_hint = " (wrong community, or agent down)"

    def __init__(self, host: str, port: int, settings: SnmpSettings):
        super().__init__(host, port, settings)
        assert settings.community is not None
        self._community = settings.community.get_secret_value().encode()

    def _decode(self, data: bytes) -> tuple[int, Response]:
        response = decode_response(data)
        return response.request_id, response

    def _open_answer(self, data: bytes, decoded: Response) -> list[VarBind]:
        if decoded.error_status:
            raise self.status_error(decoded.error_status, decoded.error_index, decoded.varbinds)
        return decoded.varbinds

    async def _exchange(
        self, oids: Sequence[Oid], max_repetitions: int | None, non_repeaters: int
    ) -> list[VarBind]:
        def build(request_id: int) -> bytes:
            if max_repetitions is None:
                return encode_request(self._community, GET, request_id, list(oids))
            return encode_request(
                self._community, GET_BULK, request_id, list(oids), non_repeaters, max_repetitions
            )

        return await self._round_trip(build)

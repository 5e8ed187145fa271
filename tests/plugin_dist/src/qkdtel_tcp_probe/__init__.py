"""A minimal external qkdtel driver: connect to host:port, optionally read one banner line."""

from __future__ import annotations

import asyncio
import time

from qkdtel.sdk import Driver, Malformed, Model, Refused, Sample


class TcpProbeOptions(Model):
    address: str
    read_banner: bool = False


class TcpProbeDriver(Driver[TcpProbeOptions]):
    description = "TCP connect time and banner of a management port"

    async def poll(self) -> list[Sample]:
        host, port = self.options.address.rsplit(":", 1)
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as exc:
            raise Refused(f"{self.options.address}: {exc.strerror or exc}") from exc
        connect_s = time.perf_counter() - started
        fields: dict[str, float | str] = {"connect_time_s": connect_s}
        try:
            if self.options.read_banner:
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    raise Malformed("banner ended before its newline")
                fields["banner"] = line.decode("utf-8", "replace").strip()
        finally:
            writer.close()
        return [Sample("tcp_probe", {"address": self.options.address}, fields)]

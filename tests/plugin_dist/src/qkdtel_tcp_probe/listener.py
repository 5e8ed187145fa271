"""A listener: devices push `name value` lines in UDP datagrams; each becomes a sample.

It imports only the SDK, and attributes a datagram to the configured device whose `address`
host sent it (from the start context), as the collector's own SNMP trap listener does.
"""

from __future__ import annotations

import asyncio
import math

from qkdtel.sdk import DeviceSource, Emit, Listener, ListenerContext, Model, Sample, now_ns


class UdpLinesOptions(Model):
    listen: str
    measurement: str = "udp_line"


class UdpLinesListener(Listener[UdpLinesOptions]):
    description = "name value lines pushed over UDP"

    def __init__(self, name: str, options: UdpLinesOptions):
        super().__init__(name, options)
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task[None]] = set()

    async def start(self, emit: Emit, context: ListenerContext) -> None:
        devices = {d.address.rsplit(":", 1)[0]: d for d in context.devices if d.address is not None}
        host, port = self.options.listen.rsplit(":", 1)
        listener = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple) -> None:
                sample = listener.to_sample(data, devices.get(addr[0]))
                if sample is not None:
                    task = asyncio.ensure_future(emit([sample]))
                    listener.pending.add(task)
                    task.add_done_callback(listener.pending.discard)

        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            Protocol, local_addr=(host, int(port))
        )

    def to_sample(self, data: bytes, device: DeviceSource | None) -> Sample | None:
        try:
            name, value = data.decode("ascii").split()
            number = float(value)
        except ValueError:
            return None  # not `name value`: ignored
        if not math.isfinite(number):
            return None
        tags = {"device": device.name, **device.tags} if device is not None else {}
        return Sample(self.options.measurement, tags, {name: number}, now_ns())

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.pending:
            await asyncio.wait(self.pending)

"""A blocking driver: the banner of a management port read with a plain (blocking) socket.

Written as a driver built on a blocking library would be: `poll_blocking` runs in a worker
thread that the collector cannot stop, so a device that stops answering holds that thread.
"""

from __future__ import annotations

import socket

from qkdtel.sdk import BlockingDriver, ConnectionLost, Duration, Model, Refused, Sample


class TcpBannerOptions(Model):
    address: str
    read_timeout: Duration = 5.0


class TcpBannerDriver(BlockingDriver[TcpBannerOptions]):
    description = "banner of a management port, read with a blocking socket"

    def poll_blocking(self) -> list[Sample]:
        host, port = self.options.address.rsplit(":", 1)
        try:
            conn = socket.create_connection((host, int(port)), timeout=self.options.read_timeout)
        except OSError as exc:
            raise Refused(f"{self.options.address}: {exc.strerror or exc}") from exc
        with conn:
            line = conn.makefile("rb").readline()
        if not line.endswith(b"\n"):
            raise ConnectionLost(f"{self.options.address}: closed before a whole banner line")
        banner = line.decode("utf-8", "replace").strip()
        return [Sample("tcp_probe", {"address": self.options.address}, {"banner": banner})]

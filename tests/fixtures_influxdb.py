"""A real InfluxDB 1.x server for the delivery tests, and the HTTP helpers around it.

Fixtures:
- `influxdb` (session): an `InfluxServer` -- Debian's `influxd` (1.6) on a free loopback port,
  with its own data/meta/wal directories; `stop()`/`start()` take it down and up again on the
  same port and data (outage tests). Killed at the end of the session.
- `influx_v2` (session): a `V2Shim` giving that server an `/api/v2/write` endpoint.
- `influx_db` (function): the name of a fresh database created for the test.
- `fault_proxy` (function): a `FaultProxy` in front of the server.

Used by the benchmark too (bench/delivery.py), outside pytest.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any

import pytest

from qkdtel.sims.influxd import InfluxServer, temporary_influxd


class _ForwardingHandler(BaseHTTPRequestHandler):
    """Base of the test HTTP helpers: forward one request to the real server."""

    protocol_version = "HTTP/1.1"
    server: _HelperServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest would show every request."""

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        try:
            conn.request(self.command, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _HelperServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        handler: type[_ForwardingHandler],
        upstream_port: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.upstream_port = upstream_port
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _V2Handler(_ForwardingHandler):
    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = self._body()
        if url.path != "/api/v2/write":
            self._answer(404, b'{"code":"not found","message":"path not found"}')
            return
        query = urllib.parse.parse_qs(url.query)
        bucket = query.get("bucket", [""])[0]
        db, _, rp = bucket.partition("/")
        params = {"db": db, "precision": query.get("precision", ["ns"])[0]}
        if rp:
            params["rp"] = rp
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Token ") and ":" in auth:
            params["u"], params["p"] = auth[len("Token ") :].split(":", 1)
        status, answer = self._forward(f"/write?{urllib.parse.urlencode(params)}", body, {})
        self._answer(status, answer)


class V2Shim(_HelperServer):
    """TEST-ONLY: the v2 write endpoint in front of InfluxDB 1.6, for the v2 writer's tests.

    Debian ships InfluxDB 1.6, which has no `/api/v2/write` (it came with 1.8), and InfluxDB 2.x
    is not packaged. This maps `/api/v2/write?org=&bucket=db/rp&precision=` with
    `Authorization: Token user:pass` onto 1.x's `/write?db=&rp=&precision=&u=&p=` the way
    InfluxDB 1.8+ does, and passes the answer back unchanged, so the real influxdb-client code
    path (request, status handling) runs against a real storage engine.
    """

    def __init__(self, upstream_port: int) -> None:
        super().__init__(_V2Handler, upstream_port)


@dataclass
class Fault:
    """What the proxy answers instead of forwarding, for the next `times` writes."""

    status: int
    times: int
    retry_after: str | None = None


@dataclass
class _ProxyState:
    faults: list[Fault] = field(default_factory=list)
    hold: float = 0.0
    bodies: list[bytes] = field(default_factory=list)
    answered: list[tuple[float, int]] = field(default_factory=list)
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ProxyHandler(_ForwardingHandler):
    server: FaultProxy

    def do_POST(self) -> None:
        state = self.server.state
        body = self._body()
        with state.lock:
            fault = state.faults[0] if state.faults else None
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    state.faults.pop(0)
            state.in_flight += 1
        try:
            if fault is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                self._record(fault.status)
                self._answer(fault.status, b'{"error":"injected by FaultProxy"}', headers)
                return
            try:
                status, answer = self._forward(self.path, body, {})
            except OSError:
                # The real server is down: do what it would do, fail the connection.
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            with state.lock:
                state.bodies.append(body)
            # The server has stored the batch; the client learns it only after `hold` (a
            # kill during the hold loses the acknowledgement, not the data).
            time.sleep(state.hold)
            self._record(status)
            self._answer(status, answer)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _record(self, status: int) -> None:
        with self.server.state.lock:
            self.server.state.answered.append((time.monotonic(), status))


class FaultProxy(_HelperServer):
    """TEST-ONLY: an HTTP proxy in front of the real server that can misbehave on demand.

    A real InfluxDB cannot be made to answer 429 or 503 when a test wants it, nor to be slow to
    acknowledge a write it has stored, so this proxy injects those: `fail(status, times,
    retry_after)` answers the next writes itself; `hold` delays each forwarded answer; `bodies`
    records every batch forwarded, in order; when the real server is down, the connection fails
    as it would without the proxy. With `tls`, it serves HTTPS (the TLS verification tests).
    """

    def __init__(self, upstream_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.state = _ProxyState()
        super().__init__(_ProxyHandler, upstream_port, tls)

    def fail(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        with self.state.lock:
            self.state.faults.append(Fault(status, times, retry_after))

    @property
    def hold(self) -> float:
        return self.state.hold

    @hold.setter
    def hold(self, seconds: float) -> None:
        self.state.hold = seconds

    def forwarded_lines(self) -> list[str]:
        """Every line forwarded to the server, in the order they were sent."""
        with self.state.lock:
            return [x for body in self.state.bodies for x in body.decode().split("\n") if x]


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxServer]:
    """A real `influxd` for the whole session (see InfluxServer)."""
    with temporary_influxd(keep=bool(os.environ.get("QKDTEL_KEEP_INFLUXD"))) as server:
        yield server


@pytest.fixture(scope="session")
def influx_v2(influxdb: InfluxServer) -> Iterator[V2Shim]:
    """The test-only v2 write endpoint in front of `influxdb` (see V2Shim)."""
    shim = V2Shim(influxdb.port)
    yield shim
    shim.close()


_db_numbers = count()


@pytest.fixture
def influx_db(influxdb: InfluxServer) -> str:
    """A fresh, empty database on `influxdb`, named after nothing else in the session."""
    if not influxdb.running:
        influxdb.start()
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    influxdb.create_database(name)
    return name


@pytest.fixture
def fault_proxy(influxdb: InfluxServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of `influxdb`, for this test only."""
    proxy = FaultProxy(influxdb.port)
    yield proxy
    proxy.close()

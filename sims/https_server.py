"""An HTTPS server with mutual TLS on loopback, answering JSON, for the simulated KME and QRNG.

Stdlib `http.server` behind `ssl` (TLS 1.2+, client certificate required and checked against the
network CA), in a thread of its own. It records the path of every request it receives (so a
test can show what a client asked, and what it never asked), and takes injected faults:

- `down()` / `up()`: the port and its kept-alive connections close (connection refused) and
  reopen on the same port;
- `Fault.UNAVAILABLE`: HTTP 503;
- `Fault.MALFORMED`: a 200 whose body is not JSON;
- `Fault.OVERSIZED`: a 200 with a body of `OVERSIZED_BYTES`, close-delimited (no length
  announced, so only a client that caps its reads stops early).

TLS handshakes run in the request's thread (not the accepting one), so a client that fails or
stalls its handshake never holds up the others.
"""

from __future__ import annotations

import contextlib
import enum
import json
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qkdtel.sims.certs import Identity

OVERSIZED_BYTES = 8 * 1024 * 1024

Route = Callable[[str], tuple[int, Any]]
"""A path -> (HTTP status, JSON-able body); the simulated device's logic."""


class Fault(enum.Enum):
    NONE = "none"
    UNAVAILABLE = "503"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"


def server_context(ca: str, identity: Identity) -> ssl.SSLContext:
    """TLS 1.2+, our certificate, a client certificate required and verified against `ca`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(identity.cert), str(identity.key))
    context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Handler(BaseHTTPRequestHandler):
    server: _TlsServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads `requests`, not stderr."""

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.record(self.path)
        fault = owner.fault
        if fault is Fault.UNAVAILABLE:
            self._send(503, b'{"message": "service unavailable"}')
        elif fault is Fault.MALFORMED:
            self._send(200, b'{"stored_key_count": 12, "max_key_count": ')
        elif fault is Fault.OVERSIZED:
            self._send_unbounded()
        else:
            status, body = owner.route(self.path)
            self._send(status, json.dumps(body).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_unbounded(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk = b" " * 65536
        try:
            self.wfile.write(b'{"padding": "')
            for _ in range(OVERSIZED_BYTES // len(chunk)):
                self.wfile.write(chunk)
            self.wfile.write(b'"}')
        except OSError:
            pass  # the client stopped reading, as it should


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, owner: MtlsJsonServer):
        self.context = context
        self.owner = owner
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # the handshake happens at the first read, in the request's own thread
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._open_lock:
            self._open.add(wrapped)
        return wrapped, address

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """End every open (kept-alive) connection: a device taken down must stop answering
        the clients already connected too, not only refuse new ones."""
        with self._open_lock:
            connections, self._open = list(self._open), set()
        for sock in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A refused handshake (wrong or missing client certificate) is counted, not printed."""
        self.owner.handshake_failures += 1


class MtlsJsonServer:
    """The server (see the module); `route` is the device."""

    def __init__(self, route: Route, ca: str, identity: Identity, host: str = "127.0.0.1"):
        self.route = route
        self.fault = Fault.NONE
        self.handshake_failures = 0
        self._context = server_context(ca, identity)
        self._lock = threading.Lock()
        self._requests: list[str] = []
        self._server: _TlsServer | None = None
        self._host = host
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self.port}"

    def record(self, path: str) -> None:
        with self._lock:
            self._requests.append(path)

    def requests(self) -> list[str]:
        """Paths of every request received so far, in order."""
        with self._lock:
            return list(self._requests)

    def up(self) -> None:
        """Listen (again, on the same port after `down`)."""
        if self._server is not None:
            return
        server = _TlsServer((self._host, self.port), self._context, self)
        self.port = server.server_address[1]
        self._server = server
        name = f"https:{self.port}"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()

    def down(self) -> None:
        """Close the port and the open connections: connections are refused until `up`."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_connections()

    close = down

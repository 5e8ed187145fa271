"""Fixtures around the external driver distribution in tests/plugin_dist.

`plugin_wheel` builds it into a wheel as a third party would; `tcp_probe_driver` installs that
wheel into a private directory on sys.path, so this process discovers the driver through the
`qkdtel.drivers` entry-point group exactly as it would from site-packages.
`tcp_server` starts real TCP servers on loopback that answer with a banner or never answer.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

PLUGIN_SRC = Path(__file__).parent / "plugin_dist"


@pytest.fixture(scope="session")
def plugin_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plugin-wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(PLUGIN_SRC),
        ],
        check=True,
    )
    (wheel,) = out.glob("qkdtel_tcp_probe-*.whl")
    return wheel


@pytest.fixture(scope="session")
def tcp_probe_driver(plugin_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(plugin_wheel),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield "tcp_probe"
    sys.path.remove(str(target))


class TcpServers:
    """Loopback TCP servers: `banner()` greets every client, `silent()` accepts and says nothing."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._held: list[socket.socket] = []

    def _listen(self, greet: bytes | None) -> str:
        sock = socket.create_server(("127.0.0.1", 0))
        self._sockets.append(sock)

        def serve() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                if greet is None:
                    self._held.append(conn)  # never answer: a hung device
                else:
                    with conn:
                        conn.sendall(greet)

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{sock.getsockname()[1]}"

    def banner(self, text: str = "QKD-MGMT ready") -> str:
        return self._listen(text.encode() + b"\n")

    def silent(self) -> str:
        return self._listen(None)

    @staticmethod
    def closed() -> str:
        """An address where nothing listens (connection refused)."""
        with socket.create_server(("127.0.0.1", 0)) as sock:
            return f"127.0.0.1:{sock.getsockname()[1]}"

    def close(self) -> None:
        for s in self._sockets + self._held:
            s.close()


@pytest.fixture
def tcp_servers() -> Iterator[TcpServers]:
    servers = TcpServers()
    yield servers
    servers.close()

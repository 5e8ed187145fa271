"""A throwaway InfluxDB 1.x server: Debian's `influxd` on free loopback ports, own data dir.

The demo (`qkdtel demo`), the benchmarks and the tests all need a real store that nobody else
uses; this starts one with a generated configuration and tears it down again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false

[continuous_queries]
  enabled = false

[subscriber]
  enabled = false
"""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InfluxServer:
    """One `influxd` process with a generated configuration in a temporary directory.

    Reporting (usage statistics to InfluxData) is off, the `_internal` monitor database is off,
    HTTP authentication is off, and both the HTTP and the RPC (backup) ports are on 127.0.0.1.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.rpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "influxd.conf"
        self.config.write_text(_CONFIG.format(root=root, port=self.port, rpc_port=self.rpc_port))
        self.log = root / "influxd.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (same port, same data) and wait until /ping answers."""
        if self.running:
            return
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [INFLUXD, "-config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"influxd exited ({self._process.returncode}); see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                    if resp.status == 204:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"influxd did not answer /ping in {timeout} s; see {self.log}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); its data stays."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run an InfluxQL query on this server (see `influxql`)."""
        return influxql(self.url, q, db)

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def count(self, db: str, measurement: str, field: str) -> int:
        """Points of `measurement` that have `field`, counted by the server."""
        rows = self.query(f'SELECT count("{field}") FROM "{measurement}"', db)
        return rows[0]["count"] if rows else 0


def influxql(
    url: str, q: str, db: str | None = None, *, auth: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run an InfluxQL query on the InfluxDB 1.x HTTP API at `url` (`auth`: user and password,
    sent as HTTP basic auth); every row of every series as a dict (series tags included),
    times as integer nanoseconds."""
    params = {"q": q, "epoch": "ns"}
    if db:
        params["db"] = db
    request = urllib.request.Request(f"{url}/query", data=urllib.parse.urlencode(params).encode())
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        result = json.load(resp)["results"][0]
    if "error" in result:
        raise RuntimeError(f"query failed: {result['error']}")
    rows = []
    for series in result.get("series", []):
        for values in series["values"]:
            row = dict(series.get("tags") or {})
            row.update(zip(series["columns"], values, strict=True))
            rows.append(row)
    return rows


@contextlib.contextmanager
def temporary_influxd(keep: bool = False) -> Iterator[InfluxServer]:
    """Start an `InfluxServer` in a new temporary directory; stop it and remove its data after
    (unless `keep`)."""
    root = Path(tempfile.mkdtemp(prefix="qkdtel-influxd-"))
    server = InfluxServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)

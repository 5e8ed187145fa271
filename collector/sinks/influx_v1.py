"""InfluxDB 1.x through its `/write` endpoint, over urllib3 (which influxdb-client depends on).

Credentials travel in an `Authorization: Basic` header, not in the `u`/`p` query parameters
InfluxDB also accepts: a URL ends up in proxy logs and in exception messages, a header does not.
"""

from __future__ import annotations

import base64
from urllib.parse import urlencode, urlsplit

import urllib3

from qkdtel.config import InfluxV1Sink
from qkdtel.sinks.base import SinkWriter, raise_for_status, unreachable


def url_secrets(url: str) -> list[str]:
    """Credentials written into a URL (`https://user:pass@host`), to keep out of messages."""
    parts = urlsplit(url)
    return [s for s in (parts.password, parts.username) if s]


def pool_manager(verify_tls: bool, ca_file: str | None, timeout: float) -> urllib3.PoolManager:
    """A connection pool that never retries on its own (the delivery does) and verifies TLS
    unless told not to, against `ca_file` when given, else the system's trust store."""
    return urllib3.PoolManager(
        cert_reqs="CERT_REQUIRED" if verify_tls else "CERT_NONE",
        ca_certs=ca_file,
        retries=False,
        timeout=urllib3.Timeout(total=timeout),
        maxsize=1,
    )


class InfluxV1Writer(SinkWriter):
    """POSTs batches to `<url>/write?db=<database>&rp=<retention_policy>&precision=ns`."""

    def __init__(self, sink: InfluxV1Sink) -> None:
        self.name = sink.name
        query = {"db": sink.database, "precision": "ns"}
        if sink.retention_policy:
            query["rp"] = sink.retention_policy
        self._url = f"{sink.url.rstrip('/')}/write?{urlencode(query)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        password = sink.password.get_secret_value() if sink.password else None
        if sink.username:
            userpass = f"{sink.username}:{password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(userpass).decode()
        self._secrets = [password, *url_secrets(sink.url)]
        ca_file = str(sink.ca_file) if sink.ca_file else None
        self._pool = pool_manager(sink.verify_tls, ca_file, sink.timeout)

    def write(self, body: bytes) -> None:
        try:
            response = self._pool.request("POST", self._url, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            # from None: the cause names the URL and its query, which may hold a token or password
            raise unreachable(exc, self._secrets) from None
        raise_for_status(response.status, response.headers, response.data, self._secrets)

    def close(self) -> None:
        self._pool.clear()

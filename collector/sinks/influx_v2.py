"""InfluxDB through the v2 write API (2.x, 3.x, 1.8+), with influxdb-client's synchronous API.

Synchronous on purpose: the client's batching mode keeps points in memory and loses them on a
crash, and retries on its own schedule. Here one call sends one batch read from the spool, and
the delivery acknowledges it in the spool only once the server has answered 204.
"""

from __future__ import annotations

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from qkdtel.config import InfluxV2Sink
from qkdtel.sinks.base import SinkWriter, raise_for_status, unreachable
from qkdtel.sinks.influx_v1 import url_secrets


class InfluxV2Writer(SinkWriter):
    """Writes batches to `<url>/api/v2/write?org=<org>&bucket=<bucket>&precision=ns`."""

    def __init__(self, sink: InfluxV2Sink) -> None:
        self.name = sink.name
        self._org = sink.org
        self._bucket = sink.bucket
        token = sink.token.get_secret_value() if sink.token else None
        self._secrets = [token, *url_secrets(sink.url)]
        self._client = InfluxDBClient(
            url=sink.url,
            token=token,
            org=sink.org,
            timeout=int(sink.timeout * 1000),
            verify_ssl=sink.verify_tls,
            ssl_ca_cert=str(sink.ca_file) if sink.ca_file else None,
            retries=False,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        try:
            self._api.write(
                bucket=self._bucket, org=self._org, record=body, write_precision=WritePrecision.NS
            )
        except ApiException as exc:
            # Raised for every answer but 2xx; raise_for_status turns it into ours.
            raise_for_status(exc.status or 0, exc.headers, exc.body, self._secrets)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # from None: the cause names the URL and its query, which may hold a token or password
            raise unreachable(exc, self._secrets) from None

    def close(self) -> None:
        self._client.close()

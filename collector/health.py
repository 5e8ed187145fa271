"""The collector's own health over HTTP, for Prometheus and orchestrators (`collector.health`).

`/metrics`: the Prometheus text format (prometheus_client), read from the daemon at each
scrape: polls by device and result, points collected and adopted, points written / rejected /
dropped / pending per sink, write errors and latency, spool bytes, what listeners count (traps
received and refused by reason), and how often a `--workers` worker was restarted. `/healthz`: 200
`{"status": "ok"}`, or 503 with the reasons when a sink's writer is dead or stalled, or a sink
has delivered nothing for `unhealthy_after` while points wait for it (InfluxDB down, a token
revoked...).

The server runs in a thread of its own (wsgiref, one thread per request), so a slow scrape
never holds up polling; a watch task on the daemon's loop notes once a second which sinks have
nothing waiting, so that a sink idle because there was nothing to send is not "stalled".
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from qkdtel.config import HealthSettings
from qkdtel.delivery import Delivery, SinkProgress
from qkdtel.sdk import Sample

PER_SINK = {
    # qkdtel_collector field -> (metric name, kind, help)
    "points_written": ("qkdtel_points_written", "counter", "points the sink acknowledged"),
    "points_rejected": ("qkdtel_points_rejected", "counter", "points the sink refused"),
    "points_dropped": ("qkdtel_points_dropped", "counter", "points lost before the sink"),
    "points_pending": ("qkdtel_points_pending", "gauge", "points waiting in the spool"),
    "write_errors": ("qkdtel_write_errors", "counter", "failed write attempts"),
    "write_latency_s": ("qkdtel_write_latency_seconds", "gauge", "duration of the last write"),
    "writer_restarts": ("qkdtel_writer_restarts", "counter", "writer restarts after a failure"),
    "writer_stalled": ("qkdtel_writer_stalled", "gauge", "1: nothing reaches the sink"),
}
SPOOL = {
    "spool_bytes": ("qkdtel_spool_bytes", "disk the spool's files take"),
    "spool_free_bytes": ("qkdtel_spool_free_bytes", "free space on the spool's filesystem"),
}


@dataclass
class DaemonView:
    """What the endpoint reads of the daemon: its delivery, polls and listeners."""

    delivery: Delivery
    polls: Callable[[], Mapping[tuple[str, str], int]]
    """(device, result: `ok` or the error class) -> polls since start."""
    listeners: Callable[[], Iterable[tuple[str, Mapping[str, int]]]]
    """(listener name, its counters) of the running listeners."""
    worker_restarts: int = 0
    """Times the `--workers` supervisor restarted this worker (0 without `--workers`)."""


class _DaemonMetrics:
    """A prometheus_client collector reading the daemon at each scrape."""

    def __init__(self, view: DaemonView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        polls = CounterMetricFamily(
            "qkdtel_polls", "polls since start, by device and result", labels=["device", "result"]
        )
        for (device, result), n in sorted(self.view.polls().items()):
            polls.add_metric([device, result], n)
        yield polls
        yield from self._delivery(self.view.delivery.telemetry())
        yield from self._listeners()
        restarts = GaugeMetricFamily(
            "qkdtel_worker_restarts", "times the --workers supervisor restarted this worker"
        )
        restarts.add_metric([], self.view.worker_restarts)
        yield restarts

    @staticmethod
    def _delivery(points: list[Sample]) -> Iterator[Metric]:
        collected = CounterMetricFamily("qkdtel_points_collected", "points handed to the spool")
        adopted = CounterMetricFamily(
            "qkdtel_points_adopted", "points taken over from orphaned spools (docs/scaling.md)"
        )
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for key, (name, kind, text) in PER_SINK.items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[key] = family(name, text, labels=["sink"])
        spool = {key: GaugeMetricFamily(name, text) for key, (name, text) in SPOOL.items()}
        for point in points:
            for key, family in families.items():
                family.add_metric([point.tags["sink"]], float(point.fields[key]))
        if points:  # the same for every sink: one collector, one spool
            collected.add_metric([], points[0].fields["points_collected"])
            adopted.add_metric([], points[0].fields["points_adopted"])
            for key, family in spool.items():
                if key in points[0].fields:
                    family.add_metric([], points[0].fields[key])
        yield collected
        yield adopted
        yield from families.values()
        yield from spool.values()

    def _listeners(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "qkdtel_listener_received", "what listeners received", labels=["listener"]
        )
        refused = CounterMetricFamily(
            "qkdtel_listener_refused",
            "what listeners refused, by reason (wrong community, failed authentication...)",
            labels=["listener", "reason"],
        )
        for name, counters in self.view.listeners():
            for key, n in counters.items():
                if key == "received":
                    received.add_metric([name], n)
                elif key.startswith("refused_"):
                    refused.add_metric([name, key.removeprefix("refused_")], n)
        yield received
        yield refused


@dataclass
class _Watch:
    """When each sink was last seen with nothing waiting (monotonic)."""

    empty_at: dict[str, float] = field(default_factory=dict)

    def note(self, progress: list[SinkProgress]) -> None:
        now = time.monotonic()
        for sink in progress:
            if sink.pending == 0:
                self.empty_at[sink.name] = now


def problems(progress: list[SinkProgress], watch: _Watch, unhealthy_after: float) -> list[str]:
    """Why the collector is unhealthy (empty: it is healthy)."""
    out = []
    now = time.monotonic()
    for sink in progress:
        if not sink.writer_alive:
            out.append(f"sink {sink.name}: its writer is not running")
        elif sink.stalled:
            out.append(f"sink {sink.name}: its writer failed and is being restarted")
        elif sink.pending:
            waiting = min(sink.since_delivery_s, now - watch.empty_at.get(sink.name, -1e18))
            if waiting > unhealthy_after:
                out.append(
                    f"sink {sink.name}: nothing delivered for {waiting:.0f} s while"
                    f" {sink.pending} points wait (limit {unhealthy_after:g} s)"
                )
    return out


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a scrape every 15 s must not fill the daemon's log."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request: a client that never finishes its request blocks nobody."""

    daemon_threads = True


class HealthServer:
    """`/metrics` and `/healthz` on `settings.listen`, from `start()` to `stop()`."""

    def __init__(self, settings: HealthSettings, view: DaemonView) -> None:
        self.settings = settings
        self.view = view
        self._watch = _Watch()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_DaemonMetrics(view))
        self._metrics_app = make_wsgi_app(registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Bind and serve; an address that cannot be bound raises OSError naming it."""
        host, _, port = self.settings.listen.rpartition(":")
        try:
            self._server = make_server(
                host, int(port), self._app, _ThreadingWSGIServer, _QuietHandler
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {self.settings.listen}: {exc.strerror}"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="qkdtel-health", daemon=True
        )
        self._thread.start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_sinks())

    async def stop(self) -> None:
        """Stop serving (requests in flight finish on their own threads)."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None

    async def _watch_sinks(self) -> None:
        while True:
            self._watch.note(self.view.delivery.progress())
            await asyncio.sleep(1.0)

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of /healthz."""
        progress = self.view.delivery.progress()
        found = problems(progress, self._watch, self.settings.unhealthy_after)
        body: dict[str, Any] = {
            "status": "unhealthy" if found else "ok",
            "problems": found,
            "sinks": {s.name: {"pending": s.pending} for s in progress},
        }
        return (503 if found else 200), body

    def _app(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            status, body = self.health()
            data = json.dumps(body).encode()
            reason = "OK" if status == 200 else "Service Unavailable"
            start_response(f"{status} {reason}", [("Content-Type", "application/json")])
            return [data]
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"qkdtel: /metrics or /healthz\n"]

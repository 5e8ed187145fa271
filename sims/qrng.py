"""A simulated QRNG (in the class of the Quside unit MadQCI used: up to 4 Gbit/s over REST).

Its status endpoint is modelled, not published (see drivers/qrng/driver.py):
`GET /api/v1/status` over HTTPS with mutual TLS. Delivered rate follows the clients' demand
(a slow wiggle around 60 % of the 4 Gbit/s maximum), the bit counter integrates it, and the
`health` knob degrades the unit (health-test failures counted, rate halved) or fails it (no
delivery).
"""

from __future__ import annotations

import threading

from qkdtel.sims.certs import TestPki
from qkdtel.sims.clock import SimClock
from qkdtel.sims.https_server import Fault, MtlsJsonServer
from qkdtel.sims.snmp.noise import Wiggle, stream_id

MAX_RATE_BPS = 4e9
STATUS_PATH = "/api/v1/status"


class SimulatedQrng:
    """One QRNG on loopback; `health` is the fault knob ("ok", "degraded", "failed")."""

    def __init__(
        self, serial: str, clock: SimClock, pki: TestPki, seed: int = 3, host: str = "127.0.0.1"
    ):
        self.serial = serial
        self.clock = clock
        self.health = "ok"
        self._demand = Wiggle(seed, stream_id(serial, "demand"), 600.0)
        self._lock = threading.Lock()
        self._t = clock.now()
        self._bits = 0.0
        self._rct_failures = 0
        self._apt_failures = 0
        self.server = MtlsJsonServer(self._route, str(pki.ca), pki.server, host)

    @property
    def url(self) -> str:
        return self.server.url

    def set_fault(self, fault: Fault) -> None:
        self.server.fault = fault

    def rate_at(self, t: float) -> float:
        if self.health == "failed":
            return 0.0
        rate = MAX_RATE_BPS * min(1.0, max(0.05, 0.6 + 0.3 * self._demand(t)))
        return rate / 2 if self.health == "degraded" else rate

    def _route(self, path: str) -> tuple[int, object]:
        if path != STATUS_PATH:
            return 404, {"message": "not served by this simulator (status only)"}
        with self._lock:
            t = self.clock.now()
            self._bits += self.rate_at((self._t + t) / 2) * max(0.0, t - self._t)
            self._t = t
            if self.health != "ok":
                self._apt_failures += 1
            return 200, {
                "serial": self.serial,
                "health": self.health,
                "health_tests": {
                    "repetition_count_failures": self._rct_failures,
                    "adaptive_proportion_failures": self._apt_failures,
                },
                "delivered_rate_bps": self.rate_at(t),
                "max_rate_bps": MAX_RATE_BPS,
                "delivered_bits_total": int(self._bits),
                "temperature_c": 41.5,
                "uptime_s": t,
            }

    def close(self) -> None:
        self.server.down()

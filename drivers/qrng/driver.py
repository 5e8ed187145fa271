"""The `qrng` driver: a quantum random number generator's health and delivered rate -> `qrng`.

MadQCI's QRNG (a Quside unit) served random numbers over REST at up to 4 Gbit/s. Its
management API is not published, so the status endpoint is modelled plausibly (README.md):
`GET /api/v1/status` over HTTPS with mutual TLS, answering one JSON object with the overall
health, the results of the entropy source's continuous health tests (NIST SP 800-90B: the
repetition count and adaptive proportion tests), the bits delivered so far and the current
delivery rate. Random numbers themselves are never requested.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pydantic import Field

from qkdtel.drivers.https_json import HttpsSettings, JsonStatusClient
from qkdtel.sdk import Driver, FieldValue, Malformed, Sample, now_ns

STATUS_PATH = "/api/v1/status"
HEALTH = ("ok", "degraded", "failed")
MAX_RATE_BPS = 1e11
"""Well above any QRNG's rate (4 Gbit/s for the reference unit): beyond it an answer is junk."""


class QrngOptions(HttpsSettings):
    """A QRNG: its base URL and mutual-TLS files (as for a KME)."""

    model: str = Field("quside", description="tag naming the product family")


def _number(where: str, body: dict[str, Any], member: str, high: float) -> float:
    value = body.get(member)
    if type(value) not in (int, float) or not 0 <= value <= high:
        raise Malformed(f"{where}: {member} must be a number in 0..{high:g}")
    return float(value)


def _count(where: str, body: dict[str, Any], member: str) -> int:
    value = body.get(member)
    if type(value) is not int or value < 0:
        raise Malformed(f"{where}: {member} must be a non-negative integer")
    return value


def read_status(where: str, body: dict[str, Any]) -> dict[str, FieldValue]:
    """The modelled status object -> fields of `qrng`; `Malformed` naming the member."""
    health = body.get("health")
    if health not in HEALTH:
        raise Malformed(f"{where}: health must be one of {', '.join(HEALTH)}")
    tests = body.get("health_tests")
    if not isinstance(tests, dict):
        raise Malformed(f"{where}: health_tests must be an object")
    temperature = body.get("temperature_c")
    if type(temperature) not in (int, float) or not -50 <= temperature <= 150:
        raise Malformed(f"{where}: temperature_c must be a number in -50..150")
    return {
        "health": health,
        "healthy": health == "ok",
        "delivered_rate_bps": _number(where, body, "delivered_rate_bps", MAX_RATE_BPS),
        "max_rate_bps": _number(where, body, "max_rate_bps", MAX_RATE_BPS),
        "delivered_bits_total": _count(where, body, "delivered_bits_total"),
        "repetition_count_failures": _count(where, tests, "repetition_count_failures"),
        "adaptive_proportion_failures": _count(where, tests, "adaptive_proportion_failures"),
        "temperature_c": float(temperature),
        "uptime_s": _number(where, body, "uptime_s", 1e10),
    }


class QrngDriver(Driver[QrngOptions]):
    """A QRNG's health and delivered rate over HTTPS (modelled status endpoint)."""

    description: ClassVar[str] = "quantum random number generator over HTTPS (qrng)"

    def __init__(self, name: str, options: QrngOptions, timeout: float):
        super().__init__(name, options, timeout)
        self._client = JsonStatusClient(options, timeout)
        self._previous: tuple[int, float] | None = None  # delivered_bits_total, when read

    async def poll(self) -> list[Sample]:
        body = await self._client.get_object(STATUS_PATH)
        read_at = time.monotonic()
        fields = read_status(f"{self._client.where}{STATUS_PATH}", body)
        if fields["max_rate_bps"]:
            fields["utilisation_ratio"] = min(
                1.0, float(fields["delivered_rate_bps"]) / float(fields["max_rate_bps"])
            )
        total = int(fields["delivered_bits_total"])
        previous, self._previous = self._previous, (total, read_at)
        # a counter that went back (a restart) gives no rate rather than a negative one
        if previous is not None and total >= previous[0] and read_at > previous[1]:
            fields["delivered_bits_rate_bps"] = (total - previous[0]) / (read_at - previous[1])
        tags = {"model": self.options.model}
        serial = body.get("serial")
        if isinstance(serial, str) and 0 < len(serial) <= 64:
            tags["serial"] = serial
        return [Sample("qrng", tags, fields, now_ns())]

    async def aclose(self) -> None:
        await self._client.aclose()

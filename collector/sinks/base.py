"""What every sink writer shares: its error classes and the mapping of HTTP answers onto them.

A writer sends one batch of line protocol per call, synchronously (the delivery runs it in a
worker thread) and without retrying: the delivery owns retries, back-off and the spool, so a
crash never loses a batch that a client library was still holding in memory.
"""

from __future__ import annotations

import email.utils
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from http import HTTPStatus

MAX_REASON_CHARS = 500
"""Error texts from a server are cut to this length in logs and exception messages."""


class WriteError(Exception):
    """A batch was not written. The message names the cause and never contains a secret."""


class RetryableWriteError(WriteError):
    """The sink could not take the batch now (down, slow, overloaded): send it again later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RejectedWriteError(WriteError):
    """The sink refused the data itself (malformed line, type conflict, body too large).

    `detail` is the server's whole error text (secrets scrubbed), `status` its HTTP status and
    `line` the number (from 1) of the first line it refused when it says so (InfluxDB 3): from
    those `qkdtel.sinks.isolate` tells the refused lines apart without bisecting.
    """

    def __init__(self, message: str, detail: str, status: int, line: int | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.status = status
        self.line = line


class SinkWriter(ABC):
    """Writes batches of line protocol to one sink."""

    name: str

    @abstractmethod
    def write(self, body: bytes) -> None:
        """Send `body` (lines joined by newlines, nanosecond timestamps); raise a WriteError."""

    def close(self) -> None:  # noqa: B027 -- most writers hold nothing to release
        """Release connections and files."""


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every secret replaced by `***`, cut to MAX_REASON_CHARS (for messages)."""
    text = scrub(text, secrets)
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS] + "..."
    return text


def unreachable(exc: Exception, secrets: Iterable[str | None]) -> RetryableWriteError:
    """The error for a failed connection or a timeout, without secrets in its message."""
    return RetryableWriteError(redact(f"{type(exc).__name__}: {exc}", secrets))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_json(body: bytes | str | None) -> tuple[str, dict[str, object]]:
    """An error body as text, and as a JSON object if it is one (else empty)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    body = (body or "").strip()
    try:
        data = json.loads(body)
    except ValueError:
        return body, {}
    return body, data if isinstance(data, dict) else {}


def error_text(body: bytes | str | None) -> str:
    """The error message of an InfluxDB error body (1.x `error`, 2.x `message`) or the body."""
    text, data = _error_json(body)
    for key in ("error", "message"):
        if isinstance(data.get(key), str):
            return data[key]  # type: ignore[return-value]
    return text


def error_line(body: bytes | str | None) -> int | None:
    """The `line` of an InfluxDB 3 error body: the first refused line's number, from 1."""
    line = _error_json(body)[1].get("line")
    return line if type(line) is int else None


def raise_for_status(
    status: int, headers: Mapping[str, str] | None, body: bytes | str | None, secrets: list[str]
) -> None:
    """Map an HTTP answer of a write endpoint onto the delivery's error classes.

    400, 422 (InfluxDB 2.x: points refused for a type conflict or the retention period, the
    rest written) and 413 reject the data;
    every other failure (5xx, 429, and also 401/403/404, which an operator fixes without the data
    changing) keeps the points waiting in the spool.
    """
    if 200 <= status < 300:
        return
    detail = scrub(error_text(body), secrets)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    message = f"HTTP {status} {phrase}: {redact(detail)}"
    if status in (400, 413, 422):
        raise RejectedWriteError(message, detail, status, error_line(body))
    retry_after = None
    if status in (429, 503) and headers is not None:
        retry_after = parse_retry_after(headers.get("Retry-After"))
    raise RetryableWriteError(message, retry_after)

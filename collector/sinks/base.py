"""What every sink writer shares: its error classes and the isolation of rejected lines.

A writer sends one batch of line protocol per call, synchronously (the delivery runs it in a
worker thread) and without retrying: the delivery owns retries, back-off and the spool, so a
crash never loses a batch that a client library was still holding in memory.
"""

from __future__ import annotations

import email.utils
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
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

    `detail` is the server's whole error text: InfluxDB 1.x names each line it could not parse
    there, which spares the bisection.
    """

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


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


def error_text(body: bytes | str | None) -> str:
    """The error message of an InfluxDB error body (1.x `error`, 2.x `message`) or the body."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    body = (body or "").strip()
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return data[key]
    return body


def raise_for_status(
    status: int, headers: Mapping[str, str] | None, body: bytes | str | None, secrets: list[str]
) -> None:
    """Map an HTTP answer of a write endpoint onto the delivery's error classes.

    400 and 422 (InfluxDB 2.x: points outside the retention period) and 413 reject the data;
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
        raise RejectedWriteError(message, detail)
    retry_after = None
    if status in (429, 503) and headers is not None:
        retry_after = parse_retry_after(headers.get("Retry-After"))
    raise RetryableWriteError(message, retry_after)


def _named_lines(detail: str, lines: list[str]) -> dict[int, str]:
    """Indices of the lines an InfluxDB 1.x error names (`unable to parse '<line>': <why>`)."""
    marker = "unable to parse '"
    if marker not in detail:
        return {}
    wanted: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        wanted.setdefault(line, []).append(index)
    named: dict[int, str] = {}
    for segment in detail.split(marker)[1:]:
        # The line itself may contain "': ", so try each split until the prefix is one of ours.
        start = 0
        while (cut := segment.find("': ", start)) != -1:
            candidate = segment[:cut]
            if candidate in wanted:
                why = segment[cut + 3 :].split("\n", 1)[0]
                why = why.rsplit(" dropped=", 1)[0]
                for index in wanted[candidate]:
                    named[index] = f"unable to parse: {why}"
                break
            start = cut + 1
    return named


def write_isolating(
    writer: SinkWriter, lines: Sequence[str], body: bytes | None = None
) -> list[tuple[str, str]]:
    """Write `lines`; return those the sink refused, as (line, reason), having written the rest.

    `body`, when given, is `lines` already joined by newlines and encoded (a batch read from the
    spool): it is sent as it is, and `lines` is only looked at if the sink rejects it.

    When the sink rejects a batch, the good lines must not go down with the bad ones. InfluxDB
    1.x names the lines it could not parse: those are set aside and the rest is sent again.
    Otherwise (a type conflict, a point outside the retention policy, a 413, InfluxDB 2.x) the
    batch is bisected until each refused line stands alone. Sending a line twice is harmless:
    it rewrites the same series and timestamp. A retryable error propagates; the caller retries
    the whole batch later.
    """
    try:
        writer.write("\n".join(lines).encode() if body is None else body)
        return []
    except RejectedWriteError as exc:
        return _isolate(writer, list(lines), exc)


def write_batch(
    writer: SinkWriter, body: bytes, lines: Callable[[], Sequence[str]]
) -> list[tuple[str, str]]:
    """`write_isolating` for a body already joined: `lines()` is called only on a rejection."""
    try:
        writer.write(body)
        return []
    except RejectedWriteError as exc:
        return _isolate(writer, list(lines()), exc)


def _isolate(
    writer: SinkWriter, lines: list[str], exc: RejectedWriteError
) -> list[tuple[str, str]]:
    """The refused lines of `lines`, which the sink has just rejected as a whole with `exc`."""
    if len(lines) == 1:
        return [(lines[0], str(exc))]
    named = _named_lines(exc.detail, lines)
    if named:
        refused = [(lines[i], redact(f"HTTP 400: {why}")) for i, why in sorted(named.items())]
        rest = [line for i, line in enumerate(lines) if i not in named]
        return refused + (write_isolating(writer, rest) if rest else [])
    middle = len(lines) // 2
    return write_isolating(writer, lines[:middle]) + write_isolating(writer, lines[middle:])

"""HTTPS with mutual TLS for status endpoints (ETSI GS QKD 014 key managers, the QRNG): one
GET answering one JSON object, every failure mapped to a `PollError`.

httpx does HTTP; this module adds what a management plane next to key material needs:
- TLS 1.2 or later, the server verified against the configured CA (never the system's trust
  store: a KME is trusted because the QKD network's own CA signed it), a client certificate;
- the body read up to a cap and no further (a misbehaving or hostile server cannot make the
  collector buffer gigabytes);
- error messages that name the server and what went wrong, never a body: the body of a key
  manager may be key material, and the key passphrase never leaves `ssl`.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator

from qkdtel.sdk import (
    AuthError,
    ConnectionLost,
    DeviceTimeout,
    InstrumentError,
    Malformed,
    Model,
    PollError,
    Refused,
)

_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity"}
"""identity: the cap counts the bytes on the wire, so no compressed body may expand past it."""

DEFAULT_MAX_BODY_BYTES = 64 * 1024
"""A status object is a few hundred bytes; 64 KiB leaves room for verbose servers."""


class TlsSettings(Model):
    """The `tls:` section: whom to trust and who we are (mutual TLS).

    The files are loaded when the driver first connects (`client_context`), so a wrong path or
    passphrase is that device's `auth` error naming the file, and the others poll on.
    """

    ca_file: Path = Field(description="PEM CA bundle the server's certificate must chain to")
    cert_file: Path = Field(description="PEM client certificate (chain) presented to the server")
    key_file: Path = Field(description="PEM private key of the client certificate")
    key_password: SecretStr | None = Field(
        None, description="passphrase of an encrypted key_file (or key_password_file)"
    )


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client context: TLS 1.2+, server certificate and host name verified against `ca_file`
    only, our certificate and key loaded. `AuthError` naming the file that does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(tls.ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise AuthError(f"tls.ca_file {tls.ca_file}: {_load_problem(exc)}") from exc
    password = tls.key_password.get_secret_value() if tls.key_password else None
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=password)
    except (ssl.SSLError, OSError):
        # from None: the cause may echo the passphrase's effect on the key file; say only which
        # files did not load together
        raise AuthError(
            f"tls.cert_file {tls.cert_file} / tls.key_file {tls.key_file}: certificate and key "
            "do not load (missing, not PEM, not a pair, or wrong key_password)"
        ) from None
    return context


def _load_problem(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"holds no usable PEM certificate ({exc.reason or 'unreadable'})"
    if isinstance(exc, OSError):
        return f"cannot read it: {exc.strerror}"
    return str(exc)


def https_base_url(value: str) -> str:
    """Validate an `https://host[:port]` base URL (no path beyond `/`, no credentials)."""
    parts = urlsplit(value)
    if parts.scheme != "https":
        raise ValueError("must be an https:// URL (the status API is served over TLS only)")
    if not parts.hostname:
        raise ValueError("has no host name")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials (the client certificate authenticates)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be the server's base URL, like https://kme.example:8443")
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"has an invalid port: {exc}") from None
    return value.rstrip("/")


class HttpsSettings(Model):
    """Where the server is and how it is reached; shared by every HTTPS status driver."""

    url: str = Field(description="base URL, https://host[:port]")
    tls: TlsSettings
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES, ge=1024, le=16 * 1024 * 1024, description="longest answer read"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return https_base_url(value)


class JsonStatusClient:
    """GETs of JSON objects from one server over one kept-alive mTLS connection."""

    def __init__(self, settings: HttpsSettings, timeout: float):
        self.settings = settings
        self.where = settings.url
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        """The HTTP client, made at first use (loading the TLS files then; see TlsSettings)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.settings.url,
                verify=client_context(self.settings.tls),
                timeout=self._timeout,
                follow_redirects=False,  # a redirect could lead off the verified server
                trust_env=False,  # no proxy from the environment between us and a KME
            )
        return self._client

    async def get_object(self, path: str) -> dict[str, Any]:
        """The JSON object at `path`; a `PollError` for anything else (see the module)."""
        where = f"{self.where}{path}"
        client = self._http()
        try:
            async with client.stream("GET", path, headers=_HEADERS) as r:
                _check_status(where, r)
                body = await _capped_body(where, r, self.settings.max_body_bytes)
        except httpx.TimeoutException as exc:
            raise DeviceTimeout(f"{where}: no answer within {self._timeout:g}s") from exc
        except (httpx.TransportError, ssl.SSLError) as exc:
            # ssl.SSLError: a TLS 1.3 server refuses our certificate after the handshake, so
            # its alert can surface at the first read, outside httpx's own error mapping
            raise transport_error(where, exc) from exc
        return parse_object(where, body)

    async def aclose(self) -> None:
        """Close the kept-alive connection."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error somewhere in the cause chain of an httpx error, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def transport_error(where: str, exc: httpx.TransportError | ssl.SSLError) -> PollError:
    """A connection-level failure as a poll error: TLS failures are `auth` (our certificate
    refused, or the server's not signed by our CA), the rest by what broke."""
    tls = _tls_cause(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or tls.reason or type(tls).__name__
        return AuthError(f"{where}: TLS handshake failed: {reason}")
    if isinstance(exc, httpx.ConnectError):
        return Refused(f"{where}: cannot connect: {_first_line(exc)}")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        # under TLS 1.3 a server refusing our client certificate says so after the handshake:
        # its alert, or just the connection closing, reaches us at the first read
        return ConnectionLost(
            f"{where}: connection broke before an answer ({_first_line(exc)}); a server "
            "refusing our client certificate ends it so"
        )
    return PollError(f"{where}: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    """The first line of the first exception in the cause chain that says something (httpx's
    own often say nothing: `ReadError('')` over a `BrokenPipeError`)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen).strip().splitlines()
        if text:
            return text[0][:200]
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _check_status(where: str, response: httpx.Response) -> None:
    """Refuse a non-200 answer by its status alone (its body is not read: see the module)."""
    status = response.status_code
    if status == 200:
        return
    phrase = response.reason_phrase or "no reason given"
    if status in (401, 403):
        raise AuthError(f"{where}: HTTP {status} {phrase}: our client certificate is not allowed")
    if status in (301, 302, 303, 307, 308):
        raise Malformed(f"{where}: HTTP {status} {phrase}: redirects are not followed")
    raise InstrumentError(f"{where}: HTTP {status} {phrase}")


async def _capped_body(where: str, response: httpx.Response, cap: int) -> bytes:
    """The body, refused as soon as it passes `cap` bytes (the rest is never read)."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise Malformed(f"{where}: answer of {int(declared)} bytes exceeds max_body_bytes {cap}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > cap:
            raise Malformed(f"{where}: answer longer than max_body_bytes {cap}; not read further")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_object(where: str, body: bytes) -> dict[str, Any]:
    """A JSON object from `body`; `Malformed` naming the position, never quoting the body."""
    try:
        value = json.loads(body)
    except UnicodeDecodeError:
        raise Malformed(f"{where}: answer is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        # from None: the exception holds the whole document, which is not ours to log
        raise Malformed(
            f"{where}: answer is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise Malformed(f"{where}: answer is JSON but not an object ({type(value).__name__})")
    return value

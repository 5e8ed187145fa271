"""One NETCONF session per device over ncclient, and the one mapping of its failures to the SDK.

Why it is built like this:
- ncclient is blocking: callers run in a worker thread (`BlockingDriver`, the CLI).
- Host keys come from the configured known_hosts file only (ncclient itself would read
  ~/.ssh/known_hosts): `_PinnedSSHSession` overrides that one method. An unknown key and a
  changed key are told apart (a changed one may be an attack) and both refused with the
  fingerprint shown, before any credential is sent.
- A reply that is not well-formed XML is dropped by ncclient with a log line, and the caller
  would wait for the RPC's whole timeout; `_StrictHandler` (ncclient's device-handler hook)
  turns it into `Malformed` for the waiting RPC at once.
- The session is reused across polls. A transport failure drops it; the next use connects
  again, but not before a back-off (doubling up to a maximum) has passed since the last
  failed attempt, so a dead switch is not hammered with SSH handshakes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import paramiko
from lxml import etree
from ncclient.devices.default import DefaultDeviceHandler
from ncclient.manager import Manager
from ncclient.operations import RaiseMode, RPCError, TimeoutExpiredError
from ncclient.transport import SSHSession
from ncclient.transport.errors import (
    AuthenticationError,
    SessionCloseError,
    SSHError,
    SSHUnknownHostError,
    TransportError,
)

from qkdtel.drivers.netconf.options import NetconfConnection
from qkdtel.sdk import (
    AuthError,
    ConnectionLost,
    DeviceTimeout,
    InstrumentError,
    Malformed,
    PollError,
    Refused,
)

log = logging.getLogger(__name__)
# ncclient logs every message it sends or receives, whole, at INFO: at the daemon's usual
# level that would be a page per poll. Its warnings and errors still show.
logging.getLogger("ncclient").setLevel(logging.WARNING)

T = TypeVar("T")

BASE_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"


class HostKeyRejected(AuthError):
    """The server's host key is not the one known_hosts has for it (or it has none)."""


class RpcError(InstrumentError):
    """The server answered an RPC with rpc-error; the session is intact.

    `tag`, `path` and `text` are the error's error-tag, error-path and error-message
    (RFC 6241 section 4.3), so a caller can tell `lock-denied` from `invalid-value`.
    """

    def __init__(self, message: str, tag: str, path: str, text: str):
        super().__init__(message)
        self.tag = tag
        self.path = path
        self.text = text


def rpc_error(where: str, operation: str, exc: RPCError) -> RpcError:
    """An `RpcError` naming the device, the operation and the first error's tag/path/message."""
    first = exc.errors[0] if getattr(exc, "errors", None) else exc
    tag = (first.tag or "unknown").strip()
    path = (first.path or "").strip()
    text = (first.message or "").strip()
    detail = f"rpc-error {tag}"
    if path:
        detail += f" at {path}"
    if text:
        detail += f": {text}"
    return RpcError(f"{where}: {operation}: {detail}", tag, path, text)


def connection_error(where: str, exc: BaseException) -> PollError:
    """The SDK error for a failure to open or keep a session; never quotes a credential."""
    if isinstance(exc, PollError):
        return exc
    if isinstance(exc, AuthenticationError):
        return AuthError(f"{where}: SSH authentication failed")
    if isinstance(exc, ConnectionRefusedError):
        return Refused(f"{where}: connection refused")
    if isinstance(exc, socket.timeout | TimeoutError):
        return DeviceTimeout(f"{where}: no answer in time")
    if isinstance(exc, OSError):
        return Refused(f"{where}: {exc.strerror or exc}")
    if isinstance(exc, SessionCloseError | EOFError):
        return ConnectionLost(f"{where}: the server closed the session")
    if isinstance(exc, SSHError) and "socket" in str(exc).lower():
        return Refused(f"{where}: {exc}")
    if isinstance(exc, TransportError | paramiko.SSHException):
        return ConnectionLost(f"{where}: {exc}")
    return PollError(f"{where}: {type(exc).__name__}: {exc}")


class _PinnedSSHSession(SSHSession):
    """ncclient's SSH session with host keys from one known_hosts file, none from ~/.ssh."""

    def __init__(self, handler: DefaultDeviceHandler, known_hosts: Path | None):
        super().__init__(handler)
        self._known_hosts_file = known_hosts

    def load_known_hosts(self, filename: str | None = None) -> None:
        if self._known_hosts_file is not None:
            self._host_keys.load(str(self._known_hosts_file))


class _StrictHandler(DefaultDeviceHandler):
    """Fails the waiting RPCs at once on a reply that is not well-formed XML."""

    def handle_raw_dispatch(self, raw: str) -> Exception | bool:
        try:
            etree.fromstring(raw.encode("utf-8"))
        except etree.XMLSyntaxError as exc:
            return Malformed(f"reply is not well-formed XML ({exc})")
        return False


class NetconfSession:
    """The session to one device, opened on first use and after a drop (with back-off)."""

    def __init__(self, device: str, connection: NetconfConnection, rpc_timeout: float):
        """`connection` is a `NetconfConnection`; `rpc_timeout` bounds every RPC's reply."""
        self.device = device
        self.connection = connection
        self.rpc_timeout = rpc_timeout
        self.where = f"{device} ({connection.where})"
        self._manager: Manager | None = None
        self._lock = threading.RLock()
        self._backoff = connection.reconnect_backoff
        self._not_before = 0.0
        self._last_failure = ""
        self.connects = 0
        """Sessions opened so far (a reused session does not count again)."""

    # -- the session ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._manager is not None and self._manager.connected

    def manager(self) -> Manager:
        """The open session, connecting if there is none (unless backing off)."""
        with self._lock:
            if self._manager is not None and self._manager.connected:
                return self._manager
            self._manager = None
            wait = self._not_before - time.monotonic()
            if wait > 0:
                raise ConnectionLost(
                    f"{self.where}: not connected; next attempt in {wait:.1f} s "
                    f"(last: {self._last_failure})"
                )
            try:
                self._manager = self._connect()
            except Exception as exc:
                error = connection_error(self.where, exc)
                self._failed(str(error))
                raise error from exc
            self._backoff = self.connection.reconnect_backoff
            self._not_before = 0.0
            self.connects += 1
            log.info("%s: NETCONF session %s open", self.where, self._manager.session_id)
            return self._manager

    def _failed(self, reason: str) -> None:
        """Start (or lengthen) the back-off after a failed connection."""
        self._last_failure = reason.removeprefix(f"{self.where}: ")
        self._not_before = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.connection.reconnect_backoff_max)

    def _connect(self) -> Manager:
        conn = self.connection
        handler = _StrictHandler({"name": "default"})
        session = _PinnedSSHSession(handler, conn.known_hosts)
        verdict: dict[str, str] = {}
        try:
            session.connect(
                host=conn.address,
                port=conn.port,
                timeout=conn.connect_timeout,
                username=conn.username,
                password=conn.password.get_secret_value() if conn.password else None,
                key_filename=str(conn.key_file) if conn.key_file else None,
                hostkey_verify=conn.host_key_verify,
                unknown_host_cb=lambda host, fingerprint: self._judge(session, verdict),
                allow_agent=False,
                look_for_keys=False,
            )
        except SSHUnknownHostError as exc:
            raise HostKeyRejected(self._host_key_message(exc.fingerprint, verdict)) from None
        except FileNotFoundError as exc:
            raise Refused(f"{self.where}: cannot read {exc.filename}: {exc.strerror}") from exc
        return Manager(session, handler, timeout=self.rpc_timeout, raise_mode=RaiseMode.ERRORS)

    def _judge(self, session: _PinnedSSHSession, verdict: dict[str, str]) -> bool:
        """ncclient's unknown-host callback: never accept; note whether known_hosts has a
        different key for this host (changed) or none (unknown)."""
        conn = self.connection
        names = (conn.address, f"[{conn.address}]:{conn.port}")
        known = any(session._host_keys.lookup(name) for name in names)
        verdict["state"] = "changed" if known else "unknown"
        return False

    def _host_key_message(self, fingerprint: str, verdict: dict[str, str]) -> str:
        where, file = self.where, self.connection.known_hosts
        md5 = f"MD5:{fingerprint}"
        if verdict.get("state") == "changed":
            return (
                f"{where}: host key CHANGED: the server presents {md5}, which is not the key "
                f"{file} has for it; refused (an attack, or a replaced device: check, then "
                f"update {file})"
            )
        return (
            f"{where}: unknown host key {md5}: not in {file}; refused "
            f"(verify the fingerprint, then add it, e.g. with ssh-keyscan)"
        )

    def close(self) -> None:
        """Close the session politely (close-session), or just drop it if it is broken."""
        with self._lock:
            manager, self._manager = self._manager, None
        if manager is None:
            return
        try:
            if manager.connected:
                manager.close_session()
        except Exception as exc:  # closing a broken session: nothing left to do with it
            log.debug("%s: close-session: %r", self.where, exc)

    def drop(self) -> None:
        """Forget the session without close-session (it is broken or in an unknown state)."""
        with self._lock:
            manager, self._manager = self._manager, None
        if manager is not None:
            try:
                manager._session.close()
            except Exception as exc:  # the transport is already gone
                log.debug("%s: dropping the session: %r", self.where, exc)

    # -- RPCs -------------------------------------------------------------------------------

    def call(self, operation: str, request: Callable[[Manager], T], *, reconnect: bool = True) -> T:
        """Run one RPC (`request(manager)`); every failure becomes a `PollError` naming the
        device and the operation. A broken or timed-out session is dropped.

        `reconnect=False` for the steps of a change after the first: locks and a pending
        confirmed commit belong to one session, so a new one must not carry on its work.
        """
        if reconnect:
            manager = self.manager()
        else:
            with self._lock:
                manager = self._manager
            if manager is None or not manager.connected:
                raise ConnectionLost(f"{self.where}: {operation}: the session was lost")
        try:
            return request(manager)
        except RPCError as exc:
            raise rpc_error(self.where, operation, exc) from exc
        except Malformed as exc:
            self.drop()
            raise Malformed(f"{self.where}: {operation}: {exc}") from exc
        except TimeoutExpiredError as exc:
            self.drop()
            raise DeviceTimeout(
                f"{self.where}: {operation}: no reply within {self.rpc_timeout:g} s"
            ) from exc
        except PollError:
            raise
        except Exception as exc:
            self.drop()
            error = connection_error(f"{self.where}: {operation}", exc)
            raise error from exc

"""A NETCONF-over-SSH server (RFC 6241, 6242, 5277) serving a simulated optical switch
(or an SD-QKD node, sims/netconf/sdqkd.py).

Why not a library: PyPI's `netconf` (a paramiko-based server) was looked at; its last release
is from 2020, it has no notification support, pulls in `sshutil` and `monotonic`, answers
replies only through lxml (no way to send the malformed replies the tests need) and logs every
lock at error level. This server is paramiko (SSH) plus `framing` (RFC 6242) and the RPCs a
fibre switch needs: get, get-config, edit-config (candidate), validate, commit, confirmed
commit (rollback on timeout, on cancel-commit, and when the issuing session ends), lock,
unlock, discard-changes, create-subscription with `cross-connect-change` notifications,
close-session and kill-session.

Faults for tests (`Faults`): replies that are not XML, data in a wrong namespace, pairs
missing a mandatory leaf (the model's `required_leaves`), and a dropped connection at a
chosen RPC.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Protocol

import paramiko
from lxml import etree

from qkdtel.sims.netconf.framing import Framer, FramingError
from qkdtel.sims.netconf.switch import NC, NS, Config, Q, RpcFault

log = logging.getLogger(__name__)

BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
NOTIFICATION_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
CAPABILITIES = (
    BASE_10,
    BASE_11,
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:validate:1.1",
    "urn:ietf:params:netconf:capability:notification:1.0",
    f"{NS}?module=qkdtel-optical-switch&revision=2026-12-06",
)
DEFAULT_CONFIRM_TIMEOUT = 600


class DeviceModel(Protocol):
    """What the server serves: datastores, their XML, and edit-config semantics."""

    name: str
    namespace: str
    required_leaves: tuple[str, ...]
    """Leaves the `missing_leaves` fault removes (Clark names)."""
    running: Config
    candidate: Config

    def state_xml(self) -> etree._Element: ...

    def config_xml(self, config: Config) -> etree._Element | None: ...

    def edit(self, config: etree._Element, default_operation: str) -> None: ...

    def validate(self, config: Config) -> None: ...


@dataclass
class Faults:
    """Misbehaviour to inject; tests flip these while the server runs."""

    bad_xml: bool = False
    wrong_namespace: bool = False
    missing_leaves: bool = False
    drop_on: str | None = None
    """Close the SSH connection, unanswered, on this RPC: an RPC name, or "confirm" for the
    commit that would confirm a pending confirmed commit."""


@dataclass
class _Pending:
    """A confirmed commit waiting for its confirmation."""

    rollback: Config
    session_id: int
    timer: threading.Timer


@dataclass(eq=False)
class _Session:
    session_id: int
    framer: Framer
    transport: paramiko.Transport
    subscribed: bool = False
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: bytes) -> None:
        with self.send_lock:
            self.framer.write(message)


class _Auth(paramiko.ServerInterface):
    """Password and/or public-key authentication of the one configured user."""

    def __init__(self, username: str, password: str | None, keys: list[paramiko.PKey]):
        self.username, self.password, self.keys = username, password, keys
        self.subsystem = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = self.password is not None and (username, password) == (self.username, self.password)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == self.username and any(key == k for k in self.keys)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name == "netconf":
            self.subsystem.set()
            return True
        return False


class NetconfSimServer:
    """Serves one device model (a `SwitchModel`, an SD-QKD `NodeModel`) until `stop`."""

    def __init__(
        self,
        model: DeviceModel,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        host_key: paramiko.PKey | None = None,
        username: str = "admin",
        password: str | None = "admin",
        authorized_keys: list[paramiko.PKey] | None = None,
    ):
        self.model = model
        self.host_key = host_key or paramiko.ECDSAKey.generate()
        self.faults = Faults()
        self.operations: list[str] = []
        """Every RPC received, by name, in order (what a client sent, for tests)."""
        self._auth = (username, password, authorized_keys or [])
        self._sock = socket.create_server((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self._ids = itertools.count(1)
        self._sessions: dict[int, _Session] = {}
        self._locks: dict[str, int] = {}
        self._pending: _Pending | None = None
        self._state = threading.RLock()
        self._stopped = threading.Event()
        self._accepter = threading.Thread(target=self._accept, name="netconf-sim", daemon=True)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> NetconfSimServer:
        self._accepter.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._sock.close()
        self.drop_sessions()
        with self._state:
            if self._pending is not None:
                self._pending.timer.cancel()

    def __enter__(self) -> NetconfSimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def known_hosts_line(self) -> str:
        """This server's line for an OpenSSH known_hosts file."""
        key = self.host_key
        return f"[{self.host}]:{self.port} {key.get_name()} {key.get_base64()}\n"

    def drop_sessions(self) -> None:
        """Cut every SSH connection at once (a network failure as the clients see it)."""
        with self._state:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.transport.close()

    @property
    def confirm_pending(self) -> bool:
        with self._state:
            return self._pending is not None

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    # -- one connection -------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        transport = paramiko.Transport(sock)
        transport.add_server_key(self.host_key)
        auth = _Auth(*self._auth)
        session: _Session | None = None
        try:
            transport.start_server(server=auth)
            channel = transport.accept(timeout=10)
            if channel is None or not auth.subsystem.wait(10):
                return
            session = _Session(next(self._ids), Framer(channel), transport)
            self._hello(session)
            with self._state:
                self._sessions[session.session_id] = session
            while True:
                message = session.framer.read()
                if not self._handle(session, message):
                    return
        except (EOFError, OSError, FramingError, paramiko.SSHException) as exc:
            log.debug("netconf sim: connection ended: %r", exc)
        finally:
            if session is not None:
                self._ended(session)
            transport.close()

    def _hello(self, session: _Session) -> None:
        hello = etree.Element(f"{{{NC}}}hello", nsmap={None: NC})
        caps = etree.SubElement(hello, f"{{{NC}}}capabilities")
        for capability in CAPABILITIES:
            etree.SubElement(caps, f"{{{NC}}}capability").text = capability
        etree.SubElement(hello, f"{{{NC}}}session-id").text = str(session.session_id)
        session.send(etree.tostring(hello, xml_declaration=True, encoding="UTF-8"))
        theirs = etree.fromstring(session.framer.read())
        offered = {c.text.strip() for c in theirs.iter(f"{{{NC}}}capability") if c.text}
        session.framer.chunked = BASE_11 in offered

    def _ended(self, session: _Session) -> None:
        """Release the session's locks; roll back a confirmed commit it issued (RFC 6241 8.4)."""
        with self._state:
            self._sessions.pop(session.session_id, None)
            for target, holder in list(self._locks.items()):
                if holder == session.session_id:
                    del self._locks[target]
            pending = self._pending
            if pending is not None and pending.session_id == session.session_id:
                log.info("netconf sim: session %d ended before confirming", session.session_id)
                self._roll_back()

    # -- RPC dispatch ---------------------------------------------------------------------

    def _handle(self, session: _Session, message: bytes) -> bool:
        """Answer one message; False when the session is to end."""
        try:
            rpc = etree.fromstring(message)
        except etree.XMLSyntaxError:
            return False
        if rpc.tag != f"{{{NC}}}rpc" or len(rpc) != 1:
            return False
        operation = rpc[0]
        name = etree.QName(operation).localname
        self.operations.append(name)
        if self._drop_here(name, operation):
            return False
        reply = etree.Element(f"{{{NC}}}rpc-reply", rpc.attrib, nsmap={None: NC})
        try:
            with self._state:
                body = self._dispatch(session, name, operation)
        except RpcFault as fault:
            reply.append(fault.to_xml())
        else:
            reply.extend(body if body is not None else [etree.Element(f"{{{NC}}}ok")])
        session.send(self._render(reply, name))
        return name not in ("close-session", "kill-session")

    def _drop_here(self, name: str, operation: etree._Element) -> bool:
        drop = self.faults.drop_on
        if drop is None:
            return False
        confirming = name == "commit" and operation.find(f"{{{NC}}}confirmed") is None
        return drop == name or (drop == "confirm" and confirming and self.confirm_pending)

    def _render(self, reply: etree._Element, name: str) -> bytes:
        text = etree.tostring(reply, xml_declaration=True, encoding="UTF-8")
        if name == "get" and self.faults.bad_xml:
            return text.replace(b"</rpc-reply>", b"<unclosed></rpc-reply>")
        if name == "get" and self.faults.wrong_namespace:
            return text.replace(self.model.namespace.encode(), b"urn:example:some-other-model")
        return text

    def _dispatch(self, session: _Session, name: str, op: etree._Element) -> list | None:
        handlers = {
            "get": self._get,
            "get-config": self._get_config,
            "edit-config": self._edit_config,
            "validate": self._validate,
            "commit": self._commit,
            "cancel-commit": self._cancel_commit,
            "discard-changes": self._discard,
            "lock": self._lock,
            "unlock": self._unlock,
            "create-subscription": self._subscribe,
            "close-session": lambda s, o: None,
            "kill-session": self._kill,
        }
        handler = handlers.get(name)
        if handler is None:
            raise RpcFault("operation-not-supported", f"{name} is not supported", "", "protocol")
        return handler(session, op)

    @staticmethod
    def _target(op: etree._Element, element: str = "target") -> str:
        holder = op.find(f"{{{NC}}}{element}")
        if holder is None or len(holder) != 1:
            raise RpcFault("missing-element", f"{element} is missing", "", "protocol")
        target = etree.QName(holder[0]).localname
        if target not in ("running", "candidate"):
            raise RpcFault("invalid-value", f"no datastore {target}", "", "protocol")
        return target

    def _data(self, content: etree._Element | None) -> list:
        data = etree.Element(f"{{{NC}}}data")
        if content is not None:
            if self.faults.missing_leaves:
                for leaf in list(content.iter(*self.model.required_leaves)):
                    leaf.getparent().remove(leaf)
            data.append(content)
        return [data]

    def _get(self, session: _Session, op: etree._Element) -> list:
        return self._data(self.model.state_xml())

    def _get_config(self, session: _Session, op: etree._Element) -> list:
        source = self._target(op, "source")
        config = self.model.candidate if source == "candidate" else self.model.running
        return self._data(self.model.config_xml(config))

    def _check_lock(self, session: _Session, target: str) -> None:
        holder = self._locks.get(target)
        if holder is not None and holder != session.session_id:
            raise RpcFault(
                "in-use", f"{target} is locked by session {holder}", "", "protocol", holder
            )

    def _edit_config(self, session: _Session, op: etree._Element) -> None:
        if self._target(op) != "candidate":
            raise RpcFault("operation-not-supported", "edit the candidate, then commit", "")
        self._check_lock(session, "candidate")
        config = op.find(f"{{{NC}}}config")
        if config is None:
            raise RpcFault("missing-element", "config is missing", "", "protocol")
        default = op.findtext(f"{{{NC}}}default-operation") or "merge"
        self.model.edit(config, default)

    def _validate(self, session: _Session, op: etree._Element) -> None:
        source = self._target(op, "source")
        self.model.validate(self.model.candidate if source == "candidate" else self.model.running)

    def _commit(self, session: _Session, op: etree._Element) -> None:
        self._check_lock(session, "running")
        switch = self.model
        switch.validate(switch.candidate)
        confirmed = op.find(f"{{{NC}}}confirmed") is not None
        pending = self._pending
        if pending is not None:
            pending.timer.cancel()
            self._pending = None
        if confirmed:
            timeout = int(op.findtext(f"{{{NC}}}confirm-timeout") or DEFAULT_CONFIRM_TIMEOUT)
            rollback = pending.rollback if pending else copy.deepcopy(switch.running)
            timer = threading.Timer(timeout, self._expired)
            timer.daemon = True
            self._pending = _Pending(rollback, session.session_id, timer)
            timer.start()
        self._apply(copy.deepcopy(switch.candidate))

    def _cancel_commit(self, session: _Session, op: etree._Element) -> None:
        if self._pending is None:
            raise RpcFault("operation-failed", "no confirmed commit is pending", "")
        self._roll_back()

    def _expired(self) -> None:
        with self._state:
            if self._pending is not None:
                log.info("netconf sim: confirmed commit not confirmed in time: rolling back")
                self._roll_back()

    def _roll_back(self) -> None:
        """Restore the configuration from before the pending confirmed commit."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.timer.cancel()
        self._apply(pending.rollback)
        self.model.candidate = copy.deepcopy(pending.rollback)

    def _apply(self, config: Config) -> None:
        """Make `config` the running one and tell subscribers what changed."""
        before = self.model.running.pairs
        self.model.running = config
        after = config.pairs
        changes = [(i, e, "removed") for i, e in before.items() if after.get(i) != e]
        changes += [(i, e, "added") for i, e in after.items() if before.get(i) != e]
        if changes:
            self._notify(changes)

    def _notify(self, changes: list[tuple[int, int, str]]) -> None:
        note = etree.Element(f"{{{NOTIFICATION_NS}}}notification", nsmap={None: NOTIFICATION_NS})
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        etree.SubElement(note, f"{{{NOTIFICATION_NS}}}eventTime").text = stamp
        event = etree.SubElement(note, f"{Q}cross-connect-change", nsmap={None: NS})
        for ingress, egress, change in changes:
            pair = etree.SubElement(event, f"{Q}pair")
            etree.SubElement(pair, f"{Q}ingress").text = str(ingress)
            etree.SubElement(pair, f"{Q}egress").text = str(egress)
            etree.SubElement(pair, f"{Q}change").text = change
        text = etree.tostring(note, xml_declaration=True, encoding="UTF-8")
        for session in [s for s in self._sessions.values() if s.subscribed]:
            threading.Thread(target=self._send_quietly, args=(session, text), daemon=True).start()

    @staticmethod
    def _send_quietly(session: _Session, text: bytes) -> None:
        try:
            session.send(text)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("netconf sim: notification to session %d lost: %r", session.session_id, exc)

    def _discard(self, session: _Session, op: etree._Element) -> None:
        self._check_lock(session, "candidate")
        self.model.candidate = copy.deepcopy(self.model.running)

    def _lock(self, session: _Session, op: etree._Element) -> None:
        target = self._target(op)
        holder = self._locks.get(target)
        if holder is not None:
            raise RpcFault(
                "lock-denied", f"{target} is locked by session {holder}", "", "protocol", holder
            )
        self._locks[target] = session.session_id

    def _unlock(self, session: _Session, op: etree._Element) -> None:
        target = self._target(op)
        if self._locks.get(target) != session.session_id:
            raise RpcFault("operation-failed", f"{target} is not locked by this session", "")
        del self._locks[target]

    def _subscribe(self, session: _Session, op: etree._Element) -> None:
        if session.subscribed:
            raise RpcFault("operation-failed", "already subscribed", "", "protocol")
        session.subscribed = True

    def _kill(self, session: _Session, op: etree._Element) -> None:
        victim = self._sessions.get(int(op.findtext(f"{{{NC}}}session-id") or 0))
        if victim is None:
            raise RpcFault("invalid-value", "no such session", "", "protocol")
        victim.transport.close()

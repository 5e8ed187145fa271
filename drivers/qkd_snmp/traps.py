"""SNMP notification receiver: traps and informs from QKD modules -> `qkd_event` points (and
from encryptors -> `encryptor_event`, drivers/encryptor_snmp/notifications.py).

The `snmp_traps` listener (`SnmpTrapListener`, entry-point group `qkdtel.listeners`): the
collector starts it with the configured devices and spools what it emits.

A QKD module raises a QBER alarm or drops a link between two polls; the notification is the
only record of it. The receiver decodes each notification by its MIB name (through the same
`qkd_snmp` profiles and compiled MIBs the poller uses, so units are normalised the same way),
maps it to one `qkd_event` point (docs/metrics.md) and hands it to the daemon, which spools it
like any polled sample.

Security: every datagram passes a gate (`TrapReceiver._admit`, this module's own BER
decoder: bounded, fast) before pysnmp sees it. v2c notifications must carry one of the
configured communities. v3 ones must name a configured user at no less than the security
level configured for it (as snmptrapd's `authUser`), and the gate checks their digest itself.
A v3 *trap* is keyed to the sender's engine ID: taken from the user's `engine_id` (any
address), or learnt from an authentic trap from a configured device's address and bound to
that address. Authenticated traps must be timely (RFC 3414 3.2 step 7b, non-authoritative
side) and not an exact replay. What is refused is counted by reason in `refused`.
Decryption and PDU decoding stay pysnmp's (USM again checks the digest).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import ntfrcv

from qkdtel.drivers.encryptor_snmp.notifications import encryptor_event
from qkdtel.drivers.qkd_snmp.ber import (
    FLAG_AUTH,
    FLAG_PRIV,
    INFORM,
    TRAP,
    BerError,
    V3Message,
    decode_scoped_pdu,
    decode_v2c,
    decode_v3,
    from_pyasn1,
)
from qkdtel.drivers.qkd_snmp.options import TrapOptions, TrapUser, join_address, split_address
from qkdtel.drivers.qkd_snmp.profiles import PROFILES, Out
from qkdtel.drivers.qkd_snmp.resolve import Notification, Resolved, resolve
from qkdtel.drivers.qkd_snmp.usm import ENGINE_ID_SIZE, Authenticator, add_usm_user, usm_clock_ok
from qkdtel.sdk import Emit, Listener, ListenerContext, Malformed, Problem, Sample, now_ns

log = logging.getLogger(__name__)

MEASUREMENT = "qkd_event"
UNKNOWN_DEVICE = "unknown"
EVENT_OUTPUTS = frozenset(
    {"peer", "link", "qber", "excess_noise_snu", "key_store_bits", "key_store_fill_ratio"}
    | {"vendor_state"}
)
"""Profile outputs a notification's objects may fill in a `qkd_event` point (docs/metrics.md)."""

LEVELS = {"noAuthNoPriv": 0, "authNoPriv": 1, "authPriv": 2}
TIME_WINDOW = 150.0
"""Seconds an authenticated message may lag its engine's clock (RFC 3414 2.2.3)."""
MAX_ENGINES = 256
"""Learnt (engine ID, user) pairs kept, per kind of user (with and without authentication);
the least recently used is forgotten beyond that."""
MAX_SEEN = 8192
"""Authenticated messages remembered (by hash) for one time window to drop exact replays."""
REFUSALS = (
    "undecodable", "wrong_community", "not_a_notification", "unknown_user", "below_level",
    "unknown_engine", "wrong_address", "wrong_digest", "not_in_time_window", "duplicate",
    "error",
)  # fmt: skip
"""Reasons a datagram is refused, the keys of `TrapReceiver.refused` (see README.md)."""

Source = tuple[str, str, dict[str, str]]


def _user(settings: TrapUser) -> _User:
    """A configured trap user with its passphrase hashed once, for the gate."""
    auth = None
    if settings.auth_protocol is not None and settings.auth_key is not None:
        auth = Authenticator(settings.auth_protocol, settings.auth_key.get_secret_value())
    return _User(settings, LEVELS[settings.security_level], auth)


@dataclass(frozen=True)
class _Kind:
    """A notification the receiver understands, with what its objects turn into."""

    mib: Resolved
    notification: Notification
    outputs: tuple[Out, ...]


class _Gate:
    """The receiver's gate in front of pysnmp's UDP transport (mixed into one per family)."""

    def __init__(self, admit: Callable[[bytes, tuple], bool], failed: Callable[[], None]):
        super().__init__()
        self._admit = admit
        self._failed = failed

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
        """Gate, then pysnmp; nothing a datagram provokes may escape into the event loop."""
        try:
            if self._admit(datagram, transportAddress):
                super().datagram_received(datagram, transportAddress)  # type: ignore[misc]
        except Exception:  # pysnmp raises many kinds on junk; counted, the next datagram goes on
            log.debug("SNMP notification from %s raised", transportAddress[0], exc_info=True)
            self._failed()


class _TrapSocket(_Gate, udp.UdpAsyncioTransport):
    """pysnmp's UDP/IPv4 transport with the receiver's gate in front of the engine."""


class _TrapSocket6(_Gate, udp6.Udp6AsyncioTransport):
    """pysnmp's UDP/IPv6 transport with the receiver's gate in front of the engine; IPv4
    senders of a dual-stack socket arrive through it as IPv4-mapped addresses."""


def sender_ip(host: str) -> str:
    """An IP address in the one form the receiver compares and reports: canonical text
    (`2001:DB8:0::1` -> `2001:db8::1`), an IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, an
    IPv4 sender on a dual-stack socket) as the IPv4 address, no zone index. Anything else
    (a host name) is returned as it is."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _sender(address: tuple) -> tuple[str, int]:
    """A socket's sender address (2 or 4 items) as the receiver attributes it: (ip, port)."""
    return sender_ip(address[0]), address[1]


def _family(host: str) -> socket.AddressFamily:
    """The socket family `listen`'s host asks for: IPv6 for an IPv6 address (the only hosts
    with a colon, given in brackets), IPv4 for an IPv4 address or a name."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bound_socket(family: socket.AddressFamily, address: tuple) -> socket.socket:
    """A UDP socket bound to `address`; an IPv6 one takes IPv4 senders too where the OS
    allows (IPV6_V6ONLY off: `[::]` is dual-stack), so one `listen` serves both."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            _dual_stack(sock)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _dual_stack(sock: socket.socket) -> None:
    """Turn IPV6_V6ONLY off; on an OS that refuses, the socket stays IPv6 only (logged)."""
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    except OSError as exc:
        log.info("trap receiver: IPv6 socket stays IPv6 only (%s)", exc.strerror)


@dataclass
class _User:
    """A configured trap user as the gate needs it."""

    settings: TrapUser
    level: int
    auth: Authenticator | None


@dataclass
class _Engine:
    """An engine ID a user's traps are accepted from: from `address` only (None: any)."""

    address: str | None
    auth_key: bytes


@dataclass
class _Clock:
    """The latest snmpEngineBoots/Time seen from an engine, and when (RFC 3414 2.3)."""

    boots: int
    time: int
    at: float

    def now(self) -> float:
        return self.time + time.monotonic() - self.at


def _readable(scoped: bytes) -> bool:
    """True if a plaintext ScopedPDU decodes with the driver's bounded decoder (pyasn1, which
    pysnmp uses, takes integers and sub-identifiers of any size, at quadratic cost)."""
    try:
        decode_scoped_pdu(scoped)
    except BerError:
        return False
    return True


def _level(flags: int) -> int | None:
    """The security level msgFlags claim; None for priv without auth (invalid)."""
    if flags & FLAG_PRIV and not flags & FLAG_AUTH:
        return None
    return bool(flags & FLAG_AUTH) + bool(flags & FLAG_PRIV)


REFUSAL_LOG_PERIOD = 60.0
"""Seconds between two summaries of refused notifications in the log."""


class RefusalLog:
    """Logs refused notifications without flooding: the first refusal at once (reason and
    sender), then at most one summary per `period` of what was refused since, by reason.

    A wrong community or a failed authentication may be an attack or a misconfigured device;
    either way the operator must hear of it, but a device retrying every second must not
    fill the disk with the same line.
    """

    def __init__(self, where: str, period: float = REFUSAL_LOG_PERIOD) -> None:
        self.where = where
        self.period = period
        self._pending: Counter[str] = Counter()
        self._senders: set[str] = set()
        self._last: float | None = None

    def note(self, reason: str, sender: str) -> None:
        """One refusal: logged now if it is the first, else counted for the next summary."""
        now = time.monotonic()
        if self._last is None:
            self._last = now
            log.warning(
                "SNMP notification from %s refused on %s: %s (more are summarised every %.0f s)",
                sender,
                self.where,
                reason,
                self.period,
                extra={"listen": self.where, "reason": reason, "sender": sender},
            )
            return
        self._pending[reason] += 1
        self._senders.add(sender)
        if now - self._last >= self.period:
            self.flush()

    def flush(self) -> None:
        """Log the summary of the refusals counted since the last line, if any."""
        if not self._pending:
            return
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(self._pending.items()))
        senders = ", ".join(sorted(self._senders)[:5]) + (", ..." if len(self._senders) > 5 else "")
        log.warning(
            "%d more SNMP notification(s) refused on %s: %s (from %s)",
            sum(self._pending.values()),
            self.where,
            by_reason,
            senders,
            extra={"listen": self.where, "refused": dict(self._pending)},
        )
        self._pending.clear()
        self._senders.clear()
        self._last = time.monotonic()


class TrapReceiver:
    """Listens on `listener.listen` and turns every notification into one `qkd_event` point.

    `devices` are (device name, host, tags) of the polled devices: a notification from one of
    their addresses carries that device's name and tags; any other sender is `unknown`.
    `host` may include the agent port (`10.0.0.5:161`, `[2001:db8::5]:161`), which
    disambiguates devices sharing an address when they also send from their agent port.
    """

    def __init__(self, listener: TrapOptions, devices: Sequence[Source], on_samples: Emit):
        self.listener = listener
        self.users = list(listener.users)
        self.devices = list(devices)
        self.on_samples = on_samples
        self.host, self.port = split_address(listener.listen, 162)
        self._engine: SnmpEngine | None = None
        self._transport: _TrapSocket | _TrapSocket6 | None = None
        self._receiver: ntfrcv.NotificationReceiver | None = None
        self._kinds: dict[tuple[int, ...], _Kind] = {}
        self._by_address: dict[tuple[str, int], list[tuple[str, dict[str, str]]]] = {}
        self._by_ip: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self._users = {u.user.encode(): _user(u) for u in self.users if u.user is not None}
        self._configured: dict[tuple[bytes, bytes], _Engine] = {}
        # Learnt engines by whether their user authenticates: unauthenticated traps (anyone can
        # forge them from a device's address) must not push authenticated engines, and with
        # them their clocks, out of the table.
        self._learned: dict[bool, OrderedDict[tuple[bytes, bytes], _Engine]] = {
            True: OrderedDict(),
            False: OrderedDict(),
        }
        self._clocks: dict[bytes, _Clock] = {}
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._own_engine_id = b""
        self.refused: Counter[str] = Counter()
        """Datagrams refused, by reason (`REFUSALS`)."""
        self._refusals = RefusalLog(join_address(self.host, self.port))
        self.accepted = 0
        """Datagrams passed to pysnmp."""
        self.evicted = 0
        """Learnt engines forgotten to stay within `MAX_ENGINES`."""
        self._tasks: set[asyncio.Task] = set()
        self._trap_oid: tuple[int, ...] = ()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when `listen` asked for port 0."""
        assert self._transport is not None and self._transport.transport is not None
        return self._transport.transport.get_extra_info("sockname")[:2]

    async def start(self) -> None:
        """Resolve device addresses, bind the socket and start accepting notifications."""
        await self._index_devices()
        self._kinds = self._notification_kinds()
        engine = SnmpEngine()
        (trap_oid,) = engine.get_mib_builder().import_symbols("SNMPv2-MIB", "snmpTrapOID")
        self._trap_oid = (*trap_oid.name, 0)
        self._own_engine_id = bytes(engine.snmpEngineID)
        family = _family(self.host)
        transport = (_TrapSocket6 if family == socket.AF_INET6 else _TrapSocket)(
            self._admit, self._failed
        )
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                self.host, self.port, family=family, type=socket.SOCK_DGRAM
            )
            sock = _bound_socket(family, infos[0][4])
        except OSError as exc:  # the port taken (another receiver, snmptrapd), not allowed...
            where = join_address(self.host, self.port)
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from None
        try:
            await loop.create_datagram_endpoint(lambda: transport, sock=sock)
        except BaseException:
            sock.close()
            raise
        domain = udp6.DOMAIN_NAME if family == socket.AF_INET6 else udp.DOMAIN_NAME
        config.add_transport(engine, domain, transport)
        for index, community in enumerate(self.listener.communities):
            config.add_v1_system(engine, f"community-{index}", community.get_secret_value())
        for user in self.users:
            add_usm_user(engine, user)  # informs: this receiver is the authoritative engine
            if user.engine_id_bytes:
                add_usm_user(engine, user, user.engine_id_bytes)
                key = (user.engine_id_bytes, user.user.encode())
                self._configured[key] = _Engine(None, self._auth_key(key))
        self._receiver = ntfrcv.NotificationReceiver(engine, self._on_notification)
        self._engine, self._transport = engine, transport
        log.info("receiving SNMP notifications on %s", join_address(*self.address))

    async def stop(self) -> None:
        """Stop listening and wait for the hand-over of notifications already received."""
        if self._engine is not None:
            if self._receiver is not None:
                self._receiver.close(self._engine)
            self._engine.close_dispatcher()
        if self._transport is not None:
            self._transport.close_transport()
        self._engine = self._transport = self._receiver = None
        self._refusals.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def set_devices(self, devices: Sequence[Source]) -> None:
        """Attribute notifications by `devices` from now on (the collector reloaded its file)."""
        self.devices = list(devices)
        await self._index_devices()

    async def _index_devices(self) -> None:
        """Resolve the devices' addresses; the tables are swapped in whole once built, so a
        notification arriving meanwhile is attributed by the previous ones."""
        loop = asyncio.get_running_loop()
        by_ip: dict[str, list[tuple[str, dict[str, str]]]] = {}
        by_address: dict[tuple[str, int], list[tuple[str, dict[str, str]]]] = {}
        for name, host, tags in self.devices:
            try:
                host_only, port = split_address(host, 0)
            except ValueError:
                log.warning("device %s: cannot read address %r for traps", name, host)
                continue
            try:
                infos = await loop.getaddrinfo(host_only, None, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("device %s: cannot resolve %s for traps: %s", name, host_only, exc)
                continue
            for ip in {sender_ip(info[4][0]) for info in infos}:
                by_ip.setdefault(ip, []).append((name, tags))
                if port:
                    by_address.setdefault((ip, port), []).append((name, tags))
        self._by_ip, self._by_address = by_ip, by_address

    @staticmethod
    def _notification_kinds() -> dict[tuple[int, ...], _Kind]:
        kinds = {}
        for profile_name in PROFILES:
            mib = resolve(profile_name)
            for oid, notification in mib.notifications.items():
                outputs = tuple(
                    out
                    for out in mib.profile.columns
                    if out.name in EVENT_OUTPUTS
                    and len(out.sources) == 1
                    and out.sources[0] in notification.objects
                )
                kinds[oid] = _Kind(mib, notification, outputs)
        return kinds

    def _device(self, address: tuple[str, int]) -> tuple[str, dict[str, str]]:
        """The configured device a notification from (ip, port) (`_sender`) came from, or
        `unknown`."""
        for candidates in (self._by_address.get(address), self._by_ip.get(address[0])):
            if candidates and len(candidates) == 1:
                return candidates[0]
        return UNKNOWN_DEVICE, {}

    # ---- the gate ------------------------------------------------------------------------------

    def _admit(self, datagram: bytes, address: tuple) -> bool:
        """Whether a datagram goes on to pysnmp; every refusal is counted in `refused`."""
        ip = sender_ip(address[0])
        try:
            message = decode_v3(datagram)
        except BerError:
            reason = self._check_v2c(datagram)
        else:
            reason = self._check_v3(datagram, message, ip)
        if reason is not None:
            self.refused[reason] += 1
            self._refusals.note(reason, ip)
            return False
        self.accepted += 1
        return True

    def _failed(self) -> None:
        self.refused["error"] += 1
        self._refusals.note("error", "?")

    def _check_v2c(self, datagram: bytes) -> str | None:
        """Refusal reason for a v2c notification (or junk), None to accept."""
        try:
            community, tag, _ = decode_v2c(datagram)
        except BerError:
            return "undecodable"  # SNMPv1 included: QKD modules send v2c or v3
        known = self.listener.communities
        if not any(hmac.compare_digest(community, c.get_secret_value().encode()) for c in known):
            return "wrong_community"
        return None if tag in (TRAP, INFORM) else "not_a_notification"

    def _check_v3(self, datagram: bytes, message: V3Message, ip: str) -> str | None:
        """Refusal reason for an SNMPv3 message, None to accept (see the module docstring)."""
        level = _level(message.flags)
        if level is None:
            return "undecodable"
        if not message.user and not message.engine_id and level == 0:
            return None  # engine discovery by an inform sender: pysnmp answers with a report
        user = self._users.get(message.user)
        if user is None:
            return "unknown_user"
        if not message.encrypted and not _readable(message.data):
            return "undecodable"
        if level < user.level:
            return "below_level"
        key = (message.engine_id, message.user)
        own = message.engine_id == self._own_engine_id  # an inform: this engine is authoritative
        engine = self._sender_engine(key, ip, user) if not own else _Engine(None, b"")
        if isinstance(engine, str):
            return engine
        if level:
            if user.auth is None:
                return "wrong_digest"
            auth_key = engine.auth_key or self._auth_key(key)
            if not user.auth.verify(auth_key, datagram, message):
                return "wrong_digest"
            if not own and not self._timely(message):
                return "not_in_time_window"  # pysnmp checks informs: it is their authority
            if not self._first_sight(datagram):
                return "duplicate"
            if not own:
                self._tick(message)
        if not own:
            self._keep(key, engine, user)
        return None

    def _sender_engine(self, key: tuple[bytes, bytes], ip: str, user: _User) -> _Engine | str:
        """The engine a trap names, or the refusal reason: a learnt engine only from the
        address it was learnt from, a new one only from a configured device's address."""
        known = self._configured.get(key) or self._learned[user.auth is not None].get(key)
        if known is not None:
            if known.address is not None and known.address != ip:
                return "wrong_address"
            return known
        if ip not in self._by_ip or not ENGINE_ID_SIZE[0] <= len(key[0]) <= ENGINE_ID_SIZE[1]:
            return "unknown_engine"
        return _Engine(ip, self._auth_key(key) if user.auth else b"")

    def _auth_key(self, key: tuple[bytes, bytes]) -> bytes:
        """The user's authentication key localised to the engine (cheap: the passphrase was
        hashed once, at start)."""
        auth = self._users[key[1]].auth
        return auth.localize(key[0]) if auth is not None else b""

    def _timely(self, message: V3Message) -> bool:
        """RFC 3414 3.2 step 7b for a non-authoritative receiver: not from an older boot,
        not more than the time window behind the engine's clock as last seen."""
        if not usm_clock_ok(message.boots, message.time):
            return False
        clock = self._clocks.get(message.engine_id)
        if clock is None:
            return True
        if message.boots != clock.boots:
            return message.boots > clock.boots
        return message.time >= clock.now() - TIME_WINDOW

    def _tick(self, message: V3Message) -> None:
        """Move the engine's clock forward to an accepted message's boots/time."""
        clock = self._clocks.get(message.engine_id)
        if clock is None or (message.boots, message.time) > (clock.boots, clock.time):
            self._clocks[message.engine_id] = _Clock(message.boots, message.time, time.monotonic())

    def _first_sight(self, datagram: bytes) -> bool:
        """False for an exact copy of an authenticated message seen within the time window."""
        now = time.monotonic()
        seen = self._seen
        while seen and (next(iter(seen.values())) < now or len(seen) >= MAX_SEEN):
            seen.popitem(last=False)
        fingerprint = hashlib.sha256(datagram).digest()
        if fingerprint in seen:
            return False
        seen[fingerprint] = now + TIME_WINDOW + 1
        return True

    def _keep(self, key: tuple[bytes, bytes], engine: _Engine, user: _User) -> None:
        """Register an accepted trap's engine with pysnmp (once), most recently used last."""
        if key in self._configured:
            return
        learned = self._learned[user.auth is not None]
        if key in learned:
            learned.move_to_end(key)
            return
        assert self._engine is not None
        add_usm_user(self._engine, user.settings, key[0])
        learned[key] = engine
        log.info("learned SNMP engine ID %s of %s", key[0].hex(), engine.address)
        if len(learned) > MAX_ENGINES:
            (old_engine, old_user), _ = learned.popitem(last=False)
            config.delete_v3_user(self._engine, old_user.decode(), old_engine)
            if user.auth is not None:
                self._clocks.pop(old_engine, None)
            self.evicted += 1

    def _on_notification(
        self,
        engine: SnmpEngine,
        state_reference: Any,
        context_engine_id: Any,
        context_name: Any,
        varbinds: Sequence[tuple[Any, Any]],
        cb_ctx: Any,
    ) -> None:
        _, address = engine.message_dispatcher.get_transport_info(state_reference)
        sample = self.to_sample(_sender(address), varbinds)
        if sample is None:
            return
        task = asyncio.get_running_loop().create_task(self.on_samples([sample]))
        self._tasks.add(task)
        task.add_done_callback(self._handed_over)

    def _handed_over(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not hand a qkd_event over: %r", task.exception())

    def to_sample(
        self, address: tuple[str, int], varbinds: Sequence[tuple[Any, Any]]
    ) -> Sample | None:
        """One notification from (ip, port) (`_sender`) -> its `qkd_event` point (an
        encryptor's: `encryptor_event`, drivers/encryptor_snmp/notifications.py); None if it
        is neither."""
        values = {}
        for oid, value in varbinds:
            try:
                values[tuple(oid)] = from_pyasn1(value)
            except BerError:
                values[tuple(oid)] = value  # a type no QKD object has: decode() rejects it
        trap_oid = values.get(self._trap_oid)
        kind = self._kinds.get(trap_oid) if isinstance(trap_oid, tuple) else None
        if kind is None:  # perhaps an encryptor's (QKDTEL-ENCRYPTOR-MIB)
            sample = encryptor_event(trap_oid, values, *self._device(address), address[0])
            if sample is None:
                log.info("ignoring notification %s from %s: not a known one", trap_oid, address[0])
            return sample
        mib, notification = kind.mib, kind.notification
        decoded: dict[str, int | str] = {}
        for name in notification.objects:
            info = mib.objects[name]
            for oid, value in values.items():
                if oid[: len(info.oid)] == info.oid and len(oid) > len(info.oid):
                    try:
                        decoded[name] = info.decode(value, name)
                    except Malformed as exc:
                        log.warning("%s from %s: %s", notification.name, address[0], exc)
                    break

        tags: dict[str, str] = {}
        fields: dict[str, Any] = {}
        for out in kind.outputs:  # one by one: a bad value loses its field, not the event
            try:
                out_tags, out_fields = mib.convert((out,), decoded, "")
            except Malformed as exc:
                log.warning("%s from %s: %s", notification.name, address[0], exc)
                continue
            tags.update(out_tags)
            fields.update(out_fields)

        event = mib.profile.notifications[notification.name]
        name, severity = event.event, event.severity
        state = decoded.get(mib.profile.state_source)
        if event.event == "link_down" and mib.profile.statuses.get(str(state)) == "active":
            name, severity = "link_up", "info"  # a state-change notification saying "up"

        device, device_tags = self._device(address)
        return Sample(
            MEASUREMENT,
            {
                **device_tags,
                **tags,
                "device": device,
                "vendor": mib.profile.module_tags["vendor"],
                "event": name,
                "severity": severity,
            },
            {"notification": notification.name, "source": address[0], **fields},
            now_ns(),
        )


def listen_problem(listen: str) -> str | None:
    """Why the trap receiver could not bind `listen` here; None if it can. It binds port 0 of
    the host, not the port itself: a running daemon may hold that one while `check` runs."""
    host, port = split_address(listen)
    if port == 0:
        return "port 0 would listen on a random port no device sends to; give 1..65535"
    family = _family(host)
    try:
        with _bound_socket(family, (host, 0)):
            pass
    except (socket.gaierror, UnicodeError):  # UnicodeError: a label over 63 characters
        return f"{host} is not an IPv4 address or a name of one"
    except OSError as exc:
        if family == socket.AF_INET6 and not _ipv6_available():
            return f"{listen}: IPv6 is not available on this machine"
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return f"cannot listen on {shown}: {exc.strerror}"
    return None


def _ipv6_available() -> bool:
    """Whether this machine speaks IPv6 at all: the kernel has it (an IPv6 socket opens) and
    it is not disabled (loopback's `::1` can be bound; `disable_ipv6` removes it)."""
    try:
        with _bound_socket(socket.AF_INET6, ("::1", 0)):
            return True
    except OSError:
        return False


def _sources(context: ListenerContext) -> list[Source]:
    """The configured devices with an address, as the receiver matches senders."""
    return [
        (device.name, device.address, dict(device.tags))
        for device in context.devices
        if device.address is not None
    ]


class SnmpTrapListener(Listener[TrapOptions]):
    """The `snmp_traps` listener: a `TrapReceiver` for the collector's configured devices.

    A device whose driver has an `address` option is a known sender: its notifications carry
    its name and tags (the full host:port tells apart devices sharing one address, as agents
    send traps from their agent port; a bare host matches too).
    """

    description = "SNMP traps and informs: QKD modules -> qkd_event, encryptors -> encryptor_event"

    def __init__(self, name: str, options: TrapOptions):
        super().__init__(name, options)
        self.receiver: TrapReceiver | None = None

    @classmethod
    def environment_problems(cls, options: TrapOptions) -> list[Problem]:
        problem = listen_problem(options.listen)
        return [(("listen",), problem)] if problem else []

    async def start(self, emit: Emit, context: ListenerContext) -> None:
        self.receiver = TrapReceiver(self.options, _sources(context), emit)
        await self.receiver.start()

    async def devices_changed(self, context: ListenerContext) -> None:
        if self.receiver is not None:
            await self.receiver.set_devices(_sources(context))

    async def stop(self) -> None:
        if self.receiver is not None:
            await self.receiver.stop()

    def counters(self) -> dict[str, int]:
        """`received` (passed the gate) and `refused_<reason>` for every reason (`REFUSALS`)."""
        receiver = self.receiver
        if receiver is None:
            return {}
        refused = {f"refused_{reason}": receiver.refused[reason] for reason in REFUSALS}
        return {"received": receiver.accepted, **refused}

"""SNMP notification receiver: traps and informs from QKD modules -> `qkd_event` points.

A QKD module raises a QBER alarm or drops a link between two polls; the notification is the
only record of it. The receiver decodes each notification by its MIB name (through the same
`qkd_snmp` profiles and compiled MIBs the poller uses, so units are normalised the same way),
maps it to one `qkd_event` point (docs/metrics.md) and hands it to the daemon, which spools it
like any polled sample.

Security: v2c notifications must carry one of the configured communities, v3 ones must
authenticate as a configured user (pysnmp's USM checks digests and decrypts). A v3 *trap*
is keyed to the sender's engine ID; the receiver learns it from the first message of a
configured device's address (never from strangers, so a flood of forged engine IDs cannot
grow the user table), or takes it from the user's `engine_id`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pyasn1.codec.ber import decoder
from pyasn1.error import PyAsn1Error
from pydantic import ValidationError
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.proto.mpmod.rfc3412 import SNMPv3Message
from pysnmp.proto.secmod.rfc3414.service import UsmSecurityParameters

from qkdtel.config import TrapListener, format_loc
from qkdtel.drivers.qkd_snmp.ber import BerError, from_pyasn1
from qkdtel.drivers.qkd_snmp.options import TrapUser, split_address
from qkdtel.drivers.qkd_snmp.profiles import PROFILES, Out
from qkdtel.drivers.qkd_snmp.resolve import Notification, Resolved, resolve
from qkdtel.drivers.qkd_snmp.usm import add_usm_user
from qkdtel.errors import Malformed
from qkdtel.sample import Sample, now_ns

log = logging.getLogger(__name__)

MEASUREMENT = "qkd_event"
UNKNOWN_DEVICE = "unknown"
EVENT_OUTPUTS = frozenset(
    {"peer", "link", "qber", "excess_noise_snu", "key_store_bits", "key_store_fill_ratio"}
    | {"vendor_state"}
)
"""Profile outputs a notification's objects may fill in a `qkd_event` point (docs/metrics.md)."""

Source = tuple[str, str, dict[str, str]]
SampleSink = Callable[[list[Sample]], Awaitable[None]]


def validate_users(raw_users: Iterable[dict[str, Any]]) -> list[TrapUser]:
    """`traps.users` entries -> `TrapUser`s; errors read `traps.users[1].auth_key: ...`."""
    users, problems = [], []
    for index, raw in enumerate(raw_users):
        try:
            users.append(TrapUser.model_validate(raw))
        except ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                problems.append(
                    f"{format_loc(('traps', 'users', index, *err['loc']))}: {err['msg']}"
                )
    if problems:
        raise ValueError("invalid trap users:\n  " + "\n  ".join(problems))
    return users


@dataclass(frozen=True)
class _Kind:
    """A notification the receiver understands, with what its objects turn into."""

    mib: Resolved
    notification: Notification
    outputs: tuple[Out, ...]


class _TrapSocket(udp.UdpAsyncioTransport):
    """pysnmp's UDP transport with a look at each datagram before the engine gets it.

    The look is only to learn a v3 sender's engine ID (see the module docstring).
    """

    def __init__(self, on_datagram: Callable[[bytes, tuple], None]):
        super().__init__()
        self._on_datagram = on_datagram

    def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
        self._on_datagram(datagram, transportAddress)
        super().datagram_received(datagram, transportAddress)


def _v3_sender(datagram: bytes) -> tuple[bytes, bytes] | None:
    """(authoritative engine ID, user name) of an SNMPv3 message; None for v1/v2c or junk."""
    try:
        message, _ = decoder.decode(datagram, asn1Spec=SNMPv3Message())
        if int(message["msgVersion"]) != 3:
            return None
        params, _ = decoder.decode(
            bytes(message["msgSecurityParameters"]), asn1Spec=UsmSecurityParameters()
        )
    except PyAsn1Error:
        return None
    return bytes(params["msgAuthoritativeEngineId"]), bytes(params["msgUserName"])


class TrapReceiver:
    """Listens on `listener.listen` and turns every notification into one `qkd_event` point.

    `devices` are (device name, host, tags) of the polled devices: a notification from one of
    their addresses carries that device's name and tags; any other sender is `unknown`.
    `host` may include the agent port (`10.0.0.5:161`, `[2001:db8::5]:161`), which
    disambiguates devices sharing an address when they also send from their agent port.
    """

    def __init__(self, listener: TrapListener, devices: Sequence[Source], on_samples: SampleSink):
        self.listener = listener
        self.users = validate_users(listener.users)
        self.devices = list(devices)
        self.on_samples = on_samples
        self.host, self.port = split_address(listener.listen, 162)
        self._engine: SnmpEngine | None = None
        self._transport: _TrapSocket | None = None
        self._receiver: ntfrcv.NotificationReceiver | None = None
        self._kinds: dict[tuple[int, ...], _Kind] = {}
        self._by_address: dict[tuple[str, int], list[tuple[str, dict[str, str]]]] = {}
        self._by_ip: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self._learned: set[tuple[bytes, bytes]] = set()
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
        transport = _TrapSocket(self._peek)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(
            lambda: transport, local_addr=(self.host, self.port), family=socket.AF_INET
        )
        config.add_transport(engine, udp.DOMAIN_NAME, transport)
        for index, community in enumerate(self.listener.communities):
            config.add_v1_system(engine, f"community-{index}", community.get_secret_value())
        for user in self.users:
            add_usm_user(engine, user)  # informs: this receiver is the authoritative engine
            if user.engine_id_bytes:
                add_usm_user(engine, user, user.engine_id_bytes)
                self._learned.add((user.engine_id_bytes, user.user.encode()))
        self._receiver = ntfrcv.NotificationReceiver(engine, self._on_notification)
        self._engine, self._transport = engine, transport
        log.info("receiving SNMP notifications on %s:%d", *self.address)

    async def stop(self) -> None:
        """Stop listening and wait for the hand-over of notifications already received."""
        if self._engine is not None:
            if self._receiver is not None:
                self._receiver.close(self._engine)
            self._engine.close_dispatcher()
        if self._transport is not None:
            self._transport.close_transport()
        self._engine = self._transport = self._receiver = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _index_devices(self) -> None:
        loop = asyncio.get_running_loop()
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
            for ip in {info[4][0] for info in infos}:
                self._by_ip.setdefault(ip, []).append((name, tags))
                if port:
                    self._by_address.setdefault((ip, port), []).append((name, tags))

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
        """The configured device a notification came from, or `unknown`."""
        for candidates in (self._by_address.get(address[:2]), self._by_ip.get(address[0])):
            if candidates and len(candidates) == 1:
                return candidates[0]
        return UNKNOWN_DEVICE, {}

    def _peek(self, datagram: bytes, address: tuple) -> None:
        """Before USM checks a v3 trap, register the users for a known device's engine ID."""
        if not self.users or self._engine is None or address[0] not in self._by_ip:
            return
        sender = _v3_sender(datagram)
        if sender is None or sender in self._learned or not sender[0]:
            return
        engine_id, user_name = sender
        for user in self.users:
            if user.user is not None and user.user.encode() == user_name:
                add_usm_user(self._engine, user, engine_id)
                self._learned.add(sender)
                log.info("learned SNMP engine ID %s of %s", engine_id.hex(), address[0])

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
        sample = self.to_sample(tuple(address[:2]), varbinds)
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
        """One notification -> its `qkd_event` point; None if it is not a QKD module's."""
        values = {}
        for oid, value in varbinds:
            try:
                values[tuple(oid)] = from_pyasn1(value)
            except BerError:
                values[tuple(oid)] = value  # a type no QKD object has: decode() rejects it
        trap_oid = values.get(self._trap_oid)
        kind = self._kinds.get(trap_oid) if isinstance(trap_oid, tuple) else None
        if kind is None:
            log.info("ignoring notification %s from %s: not a QKD module's", trap_oid, address[0])
            return None
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

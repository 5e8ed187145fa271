"""One simulated QKD module: a real SNMP command responder on a UDP port, and its notifications.

Each agent has its own pysnmp `SnmpEngine` (engine ID, USM users, VACM, MIB instrumentation),
several of which share one asyncio loop. The served objects are instances of the compiled
qkdtel MIB objects, created through the engine's `MibBuilder`: names come from the profile,
OIDs and syntaxes from the MIBs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    NotificationType,
    ObjectIdentity,
    UdpTransportTarget,
    UsmUserData,
    send_notification,
    usmAesCfb128Protocol,
    usmHMAC192SHA256AuthProtocol,
)
from pysnmp.proto.rfc1902 import OctetString
from pysnmp.smi import view

from qkdtel.mibs import load_into
from qkdtel.sims.clock import SimClock
from qkdtel.sims.snmp.physics import ChannelModel, ModuleModel, Reading
from qkdtel.sims.snmp.profiles import AgentProfile, RowFacts, TrapCondition, Value

log = logging.getLogger(__name__)

ENTERPRISE = 32473
"""IANA documentation enterprise number (RFC 5612), also used in the agents' engine IDs."""


@dataclass(frozen=True)
class Credentials:
    """How managers reach an agent: an SNMPv2c community and an SNMPv3 authPriv user.

    SNMPv3 uses HMAC-SHA-256 authentication (usmHMAC192SHA256AuthProtocol, RFC 7860) and
    AES-128 privacy (usmAesCfb128Protocol, RFC 3826); the keys are passphrases.
    """

    community: str = "public"
    user: str = "qkdtel"
    auth_key: str = "qkdtel-sim-auth"
    priv_key: str = "qkdtel-sim-priv"


@dataclass(frozen=True)
class Faults:
    """Misbehaviour for tests: a silent agent, or objects the firmware does not implement."""

    unresponsive: bool = False
    missing_objects: frozenset[str] = frozenset()
    """MIB object names removed from the agent's MIB tree: reads answer noSuchObject."""


@dataclass
class Row:
    """A row of the agent's link table: static facts plus the channel model behind it."""

    facts: RowFacts
    channel: ChannelModel
    alarm_raised: bool = False
    producing: bool = True
    empties_seen: int = 0


@dataclass(frozen=True)
class SentNotification:
    """A notification an agent sent, kept for tests and the `sims up` log."""

    agent: str
    name: str
    row: int
    sim_time: float


class _DroppingUdpTransport(udp.UdpAsyncioTransport):
    """UDP server transport that can be told to ignore every request (an unreachable agent),
    and runs `before_request` ahead of each one it answers."""

    drop = False
    before_request: Callable[[], None] | None = None

    def datagram_received(self, datagram, transportAddress):
        if not self.drop:
            if self.before_request is not None:
                self.before_request()
            super().datagram_received(datagram, transportAddress)


def engine_id(name: str) -> bytes:
    """RFC 3411 text-format snmpEngineID under enterprise 32473: stable across restarts."""
    return bytes([0x80, 0x00, ENTERPRISE >> 8 & 0xFF, ENTERPRISE & 0xFF, 0x04]) + name.encode()[:27]


def live_instance_class(builder: Any) -> type:
    """The class of instances whose value is computed from a model at read time:
    `Live(mib_object, index, read)`; shared by every simulated agent."""
    (base,) = builder.import_symbols("SNMPv2-SMI", "MibScalarInstance")

    class Live(base):  # type: ignore[misc, valid-type]
        def __init__(self, column, index: tuple[int, ...], read: Callable[[], Value]):
            super().__init__(column.name, index, column.syntax.clone(read()))
            self._read = read

        def getValue(self, name, **context):
            return self.syntax.clone(self._read())

    return Live


class SimAgent:
    """A simulated QKD module of one vendor profile, serving its rows over SNMP."""

    def __init__(
        self,
        name: str,
        site: str,
        profile: AgentProfile,
        module: ModuleModel,
        rows: list[Row],
        clock: SimClock,
        *,
        credentials: Credentials = Credentials(),
        faults: Faults = Faults(),
    ):
        self.name = name
        self.site = site
        self.profile = profile
        self.module = module
        self.rows = rows
        self.clock = clock
        self.credentials = credentials
        self.faults = faults
        self.sent: list[SentNotification] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._engine: engine.SnmpEngine | None = None
        self._transport: _DroppingUdpTransport | None = None

    # -- life cycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind `host:port` (0: a free port), set up the engine and serve; return the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.host, self.port = sock.getsockname()[:2]
        eng = engine.SnmpEngine(snmpEngineID=OctetString(engine_id(self.name)))
        self._transport = _DroppingUdpTransport().open_server_mode(sock=sock)
        self._transport.drop = self.faults.unresponsive
        self._transport.before_request = self._before_request
        config.add_transport(eng, udp.DOMAIN_NAME, self._transport)
        self._configure_security(eng)
        snmp_context = context.SnmpContext(eng)
        self._instrument(eng)
        for responder in (
            cmdrsp.GetCommandResponder,
            cmdrsp.NextCommandResponder,
            cmdrsp.BulkCommandResponder,
        ):
            responder(eng, snmp_context)
        eng.cache["mibViewController"] = view.MibViewController(eng.get_mib_builder())
        self._engine = eng
        return self.port

    def _before_request(self) -> None:
        """Ahead of each request: a model that runs in steps brings itself up to now here, so
        every object one request reads describes one state, as a real agent's answer does."""

    def stop(self) -> None:
        """Close the socket and release the engine."""
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    @property
    def unresponsive(self) -> bool:
        return self._transport is not None and self._transport.drop

    @unresponsive.setter
    def unresponsive(self, value: bool) -> None:
        """Stop (True) or resume (False) answering requests, while running."""
        if self._transport is None:
            raise RuntimeError(f"agent {self.name} is not started")
        self._transport.drop = value

    def _configure_security(self, eng: engine.SnmpEngine) -> None:
        creds = self.credentials
        config.add_v1_system(eng, "sim-area", creds.community)
        config.add_v3_user(
            eng,
            creds.user,
            config.USM_AUTH_HMAC192_SHA256,
            creds.auth_key,
            config.USM_PRIV_CFB128_AES,
            creds.priv_key,
        )
        everything = (1, 3, 6, 1)  # our MIBs plus the engine's own (sysDescr, snmpEngine...)
        config.add_vacm_user(eng, 2, "sim-area", "noAuthNoPriv", everything)
        config.add_vacm_user(eng, 3, creds.user, "authPriv", everything)

    # -- MIB instrumentation -----------------------------------------------------------------

    def _instrument(self, eng: engine.SnmpEngine) -> None:
        """Load the MIBs into the engine and create one live instance per object value."""
        builder = load_into(eng.get_mib_builder())
        module = self.profile.module
        Live = live_instance_class(builder)
        instances = []
        for scalar, fn in self.profile.scalars.items():
            if scalar in self.faults.missing_objects:
                continue
            (obj,) = builder.import_symbols(module, scalar)
            instances.append(Live(obj, (0,), lambda fn=fn: fn(self.module, self.clock.now())))
        for row in self.rows:
            for column, fn in self.profile.columns.items():
                if column in self.faults.missing_objects:
                    continue
                (obj,) = builder.import_symbols(module, column)
                read = lambda fn=fn, row=row: fn(row.facts, self._reading(row))  # noqa: E731
                instances.append(Live(obj, (row.facts.index,), read))
        missing = sorted(self.faults.missing_objects)
        if missing:
            builder.unexport_symbols(module, *missing)
        builder.export_symbols(f"__{module}-SIM", *instances)
        self._identify(builder)

    def _identify(self, builder) -> None:
        """sysDescr, sysObjectID, sysName and sysLocation say which module this is."""
        (identity,) = builder.import_symbols(self.profile.module, self.profile.identity)
        values = {
            "sysDescr": f"qkdtel simulator of {self.profile.description}: {self.name} at "
            f"{self.site} (modelled MIB {self.profile.module}, not vendor-published)",
            "sysObjectID": identity.name,
            "sysName": self.name,
            "sysLocation": self.site,
        }
        for symbol, value in values.items():
            (instance,) = builder.import_symbols("__SNMPv2-MIB", symbol)
            instance.syntax = instance.syntax.clone(value)

    def _reading(self, row: Row) -> Reading:
        reading = row.channel.reading(self.clock.now())
        speed = getattr(self.clock, "speed", 1.0)
        if speed == 1.0:
            return reading
        # Counters are integrals over time, and a poller derives rates from them over *real*
        # time: on an accelerated clock they would show rates `speed` times the modelled ones.
        # Served counters therefore run at the real-time pace of the modelled rates.
        return replace(
            reading,
            secret_bits_total=int(reading.secret_bits_total / speed),
            sifted_bits_total=int(reading.sifted_bits_total / speed),
        )

    # -- notifications -----------------------------------------------------------------------

    def due_events(self) -> list[tuple[TrapCondition, Row]]:
        """Compare every row with what was last seen; return the notifications now due."""
        due = []
        for row in self.rows:
            reading = self._reading(row)
            if reading.producing:
                row.producing = True
            elif row.producing:
                row.producing = False
                due.append((TrapCondition.LINK_DOWN, row))
            if not row.alarm_raised and self.profile.alarm_active(reading):
                row.alarm_raised = True
                due.append((TrapCondition.QUALITY_ALARM, row))
            elif row.alarm_raised and self.profile.alarm_cleared(reading):
                row.alarm_raised = False
            if reading.store_empty_count > row.empties_seen:
                row.empties_seen = reading.store_empty_count
                due.append((TrapCondition.KEY_STORE_EMPTY, row))
        return due

    def mark_seen(self) -> None:
        """Take the current state as known (no notifications for what was true at start)."""
        for row in self.rows:
            reading = self._reading(row)
            row.producing = reading.producing
            row.alarm_raised = self.profile.alarm_active(reading)
            row.empties_seen = reading.store_empty_count

    async def notify(
        self, event: TrapCondition, row: Row, target: tuple[str, int], version: str = "2c"
    ) -> None:
        """Send the profile's NOTIFICATION-TYPE for `event` on `row` as a trap.

        SNMPv2c with the community, or SNMPv3 authPriv with the agent's user (the agent is the
        authoritative engine of its traps, so keys are localised to its engine ID). The trap
        leaves from the agent's own port, so a receiver can tell the modules apart even when
        they all run on one host.
        """
        if self._engine is None:
            return
        name = self.profile.notifications[event]
        builder = self._engine.get_mib_builder()
        (notification,) = builder.import_symbols(self.profile.module, name)
        reading = self._reading(row)
        objects = {  # keyed as pysnmp looks them up: (module, object name) of OBJECTS
            (module, column): self.profile.columns[column](row.facts, reading)
            for module, column in notification.getObjects()
        }
        if await self.send_notification_type(
            self.profile.module, name, row.facts.index, objects, target, version
        ):
            self.sent.append(SentNotification(self.name, name, row.facts.index, reading.t))

    async def send_notification_type(
        self,
        module: str,
        name: str,
        index: int,
        objects: dict[tuple[str, str], Value],
        target: tuple[str, int],
        version: str = "2c",
    ) -> bool:
        """Send NOTIFICATION-TYPE `module::name` for row `index` with its objects' values, as
        a v2c or v3 (authPriv) trap from the agent's own port; False if sending failed."""
        assert self._engine is not None
        creds = self.credentials
        auth = (
            UsmUserData(
                creds.user,
                creds.auth_key,
                creds.priv_key,
                authProtocol=usmHMAC192SHA256AuthProtocol,
                privProtocol=usmAesCfb128Protocol,
            )
            if version == "3"
            else CommunityData(creds.community, mpModel=1)
        )
        error, *_ = await send_notification(
            self._engine,
            auth,
            await UdpTransportTarget.create(target, timeout=1, retries=0),
            ContextData(),
            "trap",
            NotificationType(ObjectIdentity(module, name), instanceIndex=(index,), objects=objects),
        )
        if error:
            log.warning("%s: sending %s failed: %s", self.name, name, error)
            return False
        return True

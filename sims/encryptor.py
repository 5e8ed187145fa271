"""Simulated link encryptors: an L2 Ethernet one (R&S SITLine ETH class: AES-256, up to 4 x
10GbE, QKD keys via ETSI GS QKD 004, hybrid with its own classical key exchange, classical
fallback) and an L1 OTN one (ADVA class, keys via ETSI GS QKD 014), as SNMP agents serving the
IF-MIB ports and the modelled QKDTEL-ENCRYPTOR-MIB.

The agent is the QKD simulators' `SimAgent` (engine, USM/VACM, UDP transport, faults) with its
own objects. Each association refreshes its key every `refresh_interval_s` of simulated time,
taking a key from the KME's stock of its SAE pair (`KeyStock` of sims/kme, which those
refreshes drain) while QKD keys are there; when they are not, the fetch fails and the
association falls back to the classical key exchange (or, QKD-only, waits for a key with
traffic blocked), and comes back when keys return. `qkd_available = False` forces the same.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from qkdtel.mibs import load_into
from qkdtel.sims.background import BackgroundLoop
from qkdtel.sims.clock import SimClock
from qkdtel.sims.kme.kme import KeyStock
from qkdtel.sims.snmp.agent import (
    Credentials,
    Faults,
    SentNotification,
    SimAgent,
    live_instance_class,
)
from qkdtel.sims.snmp.noise import Wiggle, stream_id

MIB = "QKDTEL-ENCRYPTOR-MIB"
MAX_TICKS_PER_READ = 10_000
TRAPS = {  # association state -> the notification announcing it
    "classicalFallback": "qencClassicalFallback",
    "encrypting": "qencQkdKeyRestored",
    "keyWait": "qencKeyWait",
}
DEFAULT_CREDENTIALS = Credentials()
NO_FAULTS = Faults()
LAYER = {"sitline_eth": "l2Ethernet", "adva_otn": "l1Otn"}
MODEL = {"sitline_eth": "SITLine ETH 40G (simulated)", "adva_otn": "FSP 3000 OTN encryptor (sim)"}


@dataclass
class Port:
    """A line port: IF-MIB row. Traffic follows a slow wiggle around `load` of its speed."""

    if_index: int
    name: str
    speed_mbps: int = 10_000
    load: float = 0.4
    up: bool = True
    seed: int = 11
    _t: float | None = None
    _octets_in: float = 0.0
    _octets_out: float = 0.0

    def octets(self, t: float) -> tuple[int, int]:
        """64-bit octet counters at simulated time `t` (integrated, never going back)."""
        if self._t is None:
            self._t = t
        span = max(0.0, t - self._t)
        if self.up and span:
            mid = (self._t + t) / 2
            wiggle = Wiggle(self.seed, stream_id(self.name, "traffic"), 300.0)(mid)
            bytes_per_s = self.speed_mbps * 1e6 / 8 * min(1.0, max(0.0, self.load + 0.2 * wiggle))
            self._octets_in += bytes_per_s * span
            self._octets_out += bytes_per_s * 0.9 * span
        self._t = max(self._t, t)
        return int(self._octets_in), int(self._octets_out)


@dataclass
class Association:
    """An encryption association of a port with a peer encryptor."""

    index: int
    port: Port
    peer: str
    key_interface: Literal["etsi004", "etsi014"]
    key_source: Literal["qkd", "hybrid"]
    stock: KeyStock | None = None
    refresh_interval_s: float = 1.0
    classical_fallback: bool = True
    """Whether the encryptor may fall back to its classical key exchange (SITLine: yes)."""
    qkd_available: bool = True
    """Knob: False makes every QKD key fetch fail (a key manager out of reach)."""
    refreshes: int = 0
    failures: int = 0
    fallbacks: int = 0
    state: str = "encrypting"
    last_refresh: float = 0.0
    _next: float | None = field(default=None, repr=False)

    def _fetch(self, t: float) -> bool:
        if not self.qkd_available:
            return False
        return self.stock is None or self.stock.take(t)  # the key comes from the KME's stock

    def advance(self, t: float) -> None:
        """Run the refreshes due up to simulated time `t`."""
        if self._next is None:
            self._next = t
        ticks = 0
        while self._next <= t and ticks < MAX_TICKS_PER_READ:
            now = self._next
            if self._fetch(now):
                self.state = "encrypting"
                self.refreshes += 1
                self.last_refresh = now
            else:
                self.failures += 1
                if self.classical_fallback:
                    if self.state != "classicalFallback":
                        self.fallbacks += 1
                    self.state = "classicalFallback"
                    self.refreshes += 1  # a classical key refresh
                    self.last_refresh = now
                else:
                    self.state = "keyWait"
            self._next = now + self.refresh_interval_s
            ticks += 1
        if self._next <= t:  # far behind (a long jump of simulated time): skip ahead
            self._next = t + self.refresh_interval_s

    def source_now(self) -> str:
        return "classical" if self.state == "classicalFallback" else self.key_source


@dataclass
class EncryptorModel:
    """One encryptor: its profile (`sitline_eth` or `adva_otn`), ports and associations."""

    profile: Literal["sitline_eth", "adva_otn"]
    ports: list[Port]
    associations: list[Association]

    def advance(self, t: float) -> None:
        """Run every association's refreshes due up to simulated time `t`."""
        for assoc in self.associations:
            assoc.advance(t)

    def columns(self, clock: SimClock) -> dict[str, Callable[[Association], Any]]:
        """Association column -> its value as of the association's last `advance` (the agent
        advances the model ahead of each request: one request, one state, however the key
        manager's availability changes while it is answered)."""
        return {
            "qencAssocIfIndex": lambda a: a.port.if_index,
            "qencAssocPeer": lambda a: a.peer,
            "qencAssocKeyInterface": lambda a: a.key_interface,
            "qencAssocKeySource": lambda a: a.source_now(),
            "qencAssocState": lambda a: a.state,
            "qencAssocKeyRefreshes": lambda a: a.refreshes,
            "qencAssocSecondsSinceRefresh": lambda a: math.floor(
                max(0.0, clock.now() - a.last_refresh)
            ),
            "qencAssocKeyFetchFailures": lambda a: a.failures,
            "qencAssocFallbacks": lambda a: a.fallbacks,
        }


class EncryptorAgent(SimAgent):
    """An encryptor's SNMP agent (see the module)."""

    def __init__(
        self,
        name: str,
        site: str,
        model: EncryptorModel,
        clock: SimClock,
        *,
        credentials: Credentials = DEFAULT_CREDENTIALS,
        faults: Faults = NO_FAULTS,
    ):
        super().__init__(name, site, None, None, [], clock, credentials=credentials, faults=faults)  # type: ignore[arg-type]  # no QKD profile, module model or link rows
        self.model = model
        self._notified: dict[int, str] = {}  # association -> state last announced

    def _instrument(self, eng: Any) -> None:
        builder = load_into(eng.get_mib_builder())
        live = live_instance_class(builder)
        clock, model = self.clock, self.model
        instances = []

        def add(module: str, name: str, index: tuple[int, ...], read: Callable[[], Any]) -> None:
            if name in self.faults.missing_objects:
                return  # firmware without it: reads answer noSuchObject / skip it in walks
            (obj,) = builder.import_symbols(module, name)
            instances.append(live(obj, index, read))

        scalars = {
            "qencModel": lambda: MODEL[model.profile],
            "qencLayer": lambda: LAYER[model.profile],
            "qencCipher": lambda: "AES-256-GCM",
        }
        for name, read in scalars.items():
            add(MIB, name, (0,), read)
        for port in model.ports:
            index = (port.if_index,)
            status = lambda p=port: "up" if p.up else "down"  # noqa: E731
            port_columns = {
                "ifDescr": lambda p=port: f"{p.name} (encrypted line port)",
                "ifAdminStatus": lambda: "up",
                "ifOperStatus": status,
                "ifInDiscards": lambda: 0,
                "ifInErrors": lambda: 0,
                "ifOutDiscards": lambda: 0,
                "ifOutErrors": lambda: 0,
                "ifName": lambda p=port: p.name,
                "ifHCInOctets": lambda p=port: p.octets(clock.now())[0],
                "ifHCOutOctets": lambda p=port: p.octets(clock.now())[1],
                "ifHighSpeed": lambda p=port: p.speed_mbps,
            }
            for name, read in port_columns.items():
                add("IF-MIB", name, index, read)
        for assoc in model.associations:
            for name, fn in model.columns(clock).items():
                add(MIB, name, (assoc.index,), lambda fn=fn, a=assoc: fn(a))
        for module in (MIB, "IF-MIB"):  # as SimAgent does: gone from the agent's MIB tree
            gone = [n for n in self.faults.missing_objects if builder.mibSymbols[module].get(n)]
            if gone:
                builder.unexport_symbols(module, *gone)
        builder.export_symbols(f"__{MIB}-SIM-{self.name}", *instances)
        self._identify_encryptor(builder)

    def _before_request(self) -> None:
        self.model.advance(self.clock.now())

    def mark_states(self) -> None:
        """Take every association's current state as known (no trap for the state at start)."""
        self.model.advance(self.clock.now())
        for assoc in self.model.associations:
            self._notified[assoc.index] = assoc.state

    async def notify_state_changes(
        self, target: tuple[str, int] | None, version: str = "2c"
    ) -> None:
        """Run the associations up to now; send the trap (SNMP `version` 2c or 3) of every one
        whose state changed since the last call to `target` (None: no traps)."""
        now = self.clock.now()
        columns = self.model.columns(self.clock)
        self.model.advance(now)
        for assoc in self.model.associations:
            if assoc.state == self._notified.get(assoc.index, assoc.state):
                self._notified[assoc.index] = assoc.state
                continue
            self._notified[assoc.index] = assoc.state
            name = TRAPS.get(assoc.state)
            if name is None or target is None or self._engine is None:
                continue
            objects = {
                (MIB, column): columns[column](assoc)
                for column in ("qencAssocPeer", "qencAssocKeySource", "qencAssocState")
            }
            if await self.send_notification_type(MIB, name, assoc.index, objects, target, version):
                self.sent.append(SentNotification(self.name, name, assoc.index, now))

    def _identify_encryptor(self, builder: Any) -> None:
        (identity,) = builder.import_symbols(MIB, "qencMIB")
        values = {
            "sysDescr": f"qkdtel simulator of a {MODEL[self.model.profile]}: {self.name} at "
            f"{self.site} (modelled MIB {MIB}, not vendor-published)",
            "sysObjectID": identity.name,
            "sysName": self.name,
            "sysLocation": self.site,
        }
        for symbol, value in values.items():
            (instance,) = builder.import_symbols("__SNMPv2-MIB", symbol)
            instance.syntax = instance.syntax.clone(value)


class BackgroundEncryptors(BackgroundLoop):
    """Encryptor agents served from a daemon thread (for tests and synchronous callers).

    The associations run every `WATCH_PERIOD_S` (`_watch`), not only when an SNMP request
    reads them, so the KME stocks they draw from drain steadily, as real refreshes would;
    with a `trap_target`, each state change is also sent there as a trap."""

    WATCH_PERIOD_S = 0.05

    def __init__(
        self,
        agents: list[EncryptorAgent],
        trap_target: tuple[str, int] | None = None,
        start_timeout: float = 30.0,
        host: str = "127.0.0.1",
        trap_version: str = "2c",
    ):
        super().__init__(start_timeout, stop_timeout=10.0)
        self.agents = agents
        self.trap_target = trap_target
        self.trap_version = trap_version
        self.host = host
        self._watcher: asyncio.Task[None] | None = None

    async def _start_serving(self) -> None:
        for agent in self.agents:
            await agent.start(self.host)
        for agent in self.agents:
            agent.mark_states()
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.WATCH_PERIOD_S)
            for agent in self.agents:
                await agent.notify_state_changes(self.trap_target, self.trap_version)

    async def _stop_serving(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for agent in self.agents:
            agent.stop()

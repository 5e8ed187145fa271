"""A simulated network: every QKD module of a topology as an SNMP agent, in one asyncio loop.

`SimNetwork` is the asyncio object (`async with SimNetwork(...) as net:`); `BackgroundNetwork`
runs one in a thread with its own loop, for synchronous code such as pytest fixtures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qkdtel.sims.background import BackgroundLoop
from qkdtel.sims.clock import AcceleratedClock, SimClock
from qkdtel.sims.snmp.agent import Credentials, Faults, Row, SimAgent
from qkdtel.sims.snmp.noise import Excursion, stream_id
from qkdtel.sims.snmp.physics import Behaviour, ChannelModel, ChannelParams, ModuleModel
from qkdtel.sims.snmp.profiles import PROFILES, RowFacts
from qkdtel.sims.topology import FAMILY, Channel, Topology

if TYPE_CHECKING:
    from qkdtel.sims.twin.model import TwinModel

log = logging.getLogger(__name__)

TICK_S = 0.25
"""Real seconds between two checks of every agent for due notifications."""


@dataclass(frozen=True)
class AgentInfo:
    """Where a running agent listens and how to talk to it."""

    name: str
    host: str
    port: int
    profile: str
    site: str
    domain: str
    credentials: Credentials

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _behaviour(topology: Topology) -> Behaviour:
    b = topology.behaviour
    return Behaviour(
        maintenance_period_s=b.maintenance_every_h * 3600.0,
        maintenance_duration_s=b.maintenance_duration_min * 60.0,
        restart_s=b.restart_min * 60.0,
    )


def build_channels(
    topology: Topology, seed: int, modules: Mapping[str, ModuleModel]
) -> dict[int, ChannelModel]:
    """One model per channel of the topology (keyed by position), shared by both ends."""
    behaviour = _behaviour(topology)
    out = {}
    for i, channel in enumerate(topology.channels):
        profile = PROFILES[topology.module(channel.alice).profile]
        name = (
            f"{i}:{channel.link}:{channel.alice}->{channel.bob}:{channel.band}{channel.itu or ''}"
        )
        if profile.disturbance_from_bob_thermal:
            disturbance = modules[channel.bob].thermal
        else:
            disturbance = Excursion(
                seed, stream_id(name, "disturbance"), sharpness=profile.burst_sharpness
            )
        params = ChannelParams(
            name=name,
            family=FAMILY[profile.name],
            skr_bps=channel.skr_kbps * 1000.0,
            loss_db=topology.channel_loss_db(channel),
            qber=None if channel.qber_percent is None else channel.qber_percent / 100.0,
            excess_noise_snu=_excess_noise(channel, profile.excess_noise_snu),
            disturbance_sensitivity=profile.disturbance_sensitivity,
            qber_per_disturbance=profile.qber_per_disturbance,
        )
        out[i] = ChannelModel(params, seed, behaviour, disturbance)
    return out


def _excess_noise(channel: Channel, default: float | None) -> float | None:
    if channel.excess_noise_msnu is not None:
        return channel.excess_noise_msnu / 1000.0
    return default


class SimNetwork:
    """The agents of a topology (or of the modules named in `only`), ready to start.

    `faults` maps module names to their fault knobs; `base_port` numbers the agents from that
    port in file order (default: free ports); `trap_target` is where notifications go, as
    SNMPv2c traps or, with `trap_version="3"`, SNMPv3 authPriv traps. With `twin`, the
    agents report the twin's channel and module models (its seed and clock), so its faults and
    switch maps show; without, the channels are built here, every path lit.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        seed: int = 0,
        clock: SimClock | None = None,
        credentials: Credentials | None = None,
        trap_target: tuple[str, int] | None = None,
        trap_version: str = "2c",
        only: Iterable[str] | None = None,
        faults: Mapping[str, Faults] | None = None,
        host: str = "127.0.0.1",
        base_port: int | None = None,
        twin: TwinModel | None = None,
    ):
        self.topology = topology
        self.seed = seed if twin is None else twin.seed
        self.clock = clock or AcceleratedClock() if twin is None else twin.clock
        self.trap_target = trap_target
        if trap_version not in ("2c", "3"):
            raise ValueError(f"trap_version is 2c or 3, not {trap_version!r}")
        self.trap_version = trap_version
        self.host = host
        self.base_port = base_port
        names = [m.name for m in topology.modules]
        wanted = names if only is None else list(only)
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ValueError(f"no module named {', '.join(unknown)} in {topology.name}")
        faults = dict(faults or {})
        unknown = sorted(set(faults) - set(wanted))
        if unknown:
            raise ValueError(f"faults given for modules not started: {', '.join(unknown)}")
        if twin is None:
            self.modules = {name: ModuleModel(name, seed) for name in names}
            self.channels = build_channels(topology, seed, self.modules)
        else:
            self.modules, self.channels = twin.modules, twin.channels
        self.agents: dict[str, SimAgent] = {}
        for name in names:
            if name in wanted:
                creds = credentials or Credentials()
                self.agents[name] = self._agent(name, creds, faults.get(name, Faults()))
        self._ticker: asyncio.Task | None = None

    def _agent(self, name: str, credentials: Credentials, faults: Faults) -> SimAgent:
        module = self.topology.module(name)
        rows = []
        for index, row in enumerate(self.topology.rows(name), start=1):
            channel = row.channel
            facts = RowFacts(
                index=index,
                peer=row.peer.name,
                link=channel.link,
                role=row.role,
                band=channel.band,
                itu=channel.itu,
                switched=channel.switched,
            )
            rows.append(Row(facts, self.channels[self.topology.channels.index(channel)]))
        return SimAgent(
            name,
            module.site,
            PROFILES[module.profile],
            self.modules[name],
            rows,
            self.clock,
            credentials=credentials,
            faults=faults,
        )

    async def start(self) -> None:
        """Bind and serve every agent, then watch them for notifications."""
        try:
            for i, agent in enumerate(self.agents.values()):
                port = 0 if self.base_port is None else self.base_port + i
                await agent.start(self.host, port)
        except BaseException:
            self.stop_agents()
            raise
        for agent in self.agents.values():
            agent.mark_seen()
        if self.trap_target is not None:
            self._ticker = asyncio.create_task(self._watch(self.trap_target))

    async def _watch(self, target: tuple[str, int]) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for agent in self.agents.values():
                for event, row in agent.due_events():
                    try:
                        await agent.notify(event, row, target, self.trap_version)
                    except Exception:  # one bad send must not end the watch
                        log.exception("%s: notification %s failed", agent.name, event.value)

    async def stop(self) -> None:
        """Stop watching and close every agent."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        self.stop_agents()

    def stop_agents(self) -> None:
        for agent in self.agents.values():
            agent.stop()

    async def __aenter__(self) -> SimNetwork:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def info(self) -> list[AgentInfo]:
        """Where each started agent listens, in file order."""
        return [
            AgentInfo(
                name=a.name,
                host=a.host,
                port=a.port,
                profile=a.profile.name,
                site=a.site,
                domain=self.topology.site(a.site).domain,
                credentials=a.credentials,
            )
            for a in self.agents.values()
        ]


class BackgroundNetwork(BackgroundLoop):
    """A `SimNetwork` served from a daemon thread with its own event loop.

    Use as a context manager (`with BackgroundNetwork(SimNetwork(...)) as bg:`); agents are
    reachable once it is entered. `call(fn)` runs `fn()` on the network's loop, which is how to
    touch an agent (e.g. `agent.unresponsive = True`) while it serves.
    """

    what = "simulated network"
    thread_name = "qkdtel-sims"

    def __init__(self, network: SimNetwork, start_timeout: float = 60.0):
        super().__init__(start_timeout, stop_timeout=30)
        self.network = network

    async def _start_serving(self) -> None:
        await self.network.start()

    async def _stop_serving(self) -> None:
        await self.network.stop()

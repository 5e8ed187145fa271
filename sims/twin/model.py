"""The MadQCI twin's one physical model: every simulator of the network reads its state here.

Why one model: a fibre bend on link 4 must show at once in the QKD modules' QBER and key rate
(SNMP), in the key managers' stocks and the encryptors' fallbacks (keys), and in the OSA, OTDR
and power meter (optics); a switch move must light one CV path and darken another everywhere.
So the state that changes - fibre faults, switch cross-connect maps, devices taken down, key
demand - lives here, and the simulators ask it rather than keep copies.

It is pure Python without I/O and thread-safe: the SNMP agents, the NETCONF switch servers, the
HTTPS key managers and the control API read and change it from their own threads. Callbacks
given to `subscribe` run after a change, outside the model's lock, in the changer's thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from qkdtel.sims.clock import SimClock
from qkdtel.sims.snmp.network import build_channels
from qkdtel.sims.snmp.noise import Wiggle, stream_id
from qkdtel.sims.snmp.physics import BREAK_LOSS_DB, ChannelModel, ModuleModel
from qkdtel.sims.topology import Channel, Join, Topology

LINK_SWING_DB = 0.05
"""Amplitude of the slow temperature-driven swing of a fibre's loss (aerial/duct cables)."""
FAULT_KINDS = ("bend", "splice", "connector", "break")
__all__ = ["BREAK_LOSS_DB", "FAULT_KINDS", "FibreFault", "TwinModel"]


@dataclass(frozen=True)
class FibreFault:
    """Extra loss at a point of a link's fibre (a bend, a bad splice, a dirty connector)."""

    link: str
    distance_km: float
    loss_db: float
    kind: str = "bend"


def both_ways(pairs: Mapping[str, str]) -> dict[str, str]:
    """A map joining each pair in both directions (a fibre pair through the switch)."""
    return {**pairs, **{b: a for a, b in pairs.items()}}


class TwinModel:
    """Faults, switch maps, device availability and key demand of one simulated network,
    and the QKD channel models (shared with the SNMP agents) that follow them."""

    def __init__(self, topology: Topology, *, seed: int, clock: SimClock):
        self.topology = topology
        self.seed = seed
        self.clock = clock
        self._lock = threading.RLock()
        self._faults: dict[str, list[FibreFault]] = {link.id: [] for link in topology.links}
        self._maps: dict[str, dict[str, str]] = {
            s.name: both_ways(s.cross_connects) for s in topology.switches
        }
        self._down: set[str] = set()
        self._consumption: dict[frozenset[str], float] = {}
        self._subscribers: list[Callable[[str], None]] = []
        self._swing = {
            link.id: Wiggle(seed, stream_id(f"link {link.id}", "temperature"), 6 * 3_600.0)
            for link in topology.links
        }
        self._joins = [topology.joins(channel) for channel in topology.channels]
        self._between: dict[frozenset[str], list[Channel]] = {}
        """Channels by the pair of sites they join (the key sims ask often)."""
        for channel in topology.channels:
            ends = frozenset(topology.module(m).site for m in (channel.alice, channel.bob))
            self._between.setdefault(ends, []).append(channel)
        self.modules = {m.name: ModuleModel(m.name, seed) for m in topology.modules}
        """The QKD modules' own condition (temperatures), shared with their SNMP agents."""
        self.channels: dict[int, ChannelModel] = build_channels(topology, seed, self.modules)
        """One model per channel (by position in the topology), shared with the SNMP agents;
        each takes its path's extra loss (None: dark) from this model."""
        for index, channel_model in self.channels.items():
            channel_model.path_loss = self._path_loss_of(index)

    # -- fibre faults ---------------------------------------------------------------------

    def add_fibre_fault(
        self, link: str, loss_db: float, distance_km: float | None = None, kind: str = "bend"
    ) -> FibreFault:
        """Add loss at `distance_km` along `link` (default: mid-span) from its `a` end."""
        span = self._link(link).length_km
        if not math.isfinite(loss_db) or loss_db <= 0:
            raise ValueError(f"loss_db must be a positive number of dB, not {loss_db!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind is one of {', '.join(FAULT_KINDS)}, not {kind!r}")
        at = span / 2 if distance_km is None else distance_km
        if not math.isfinite(at) or not 0 <= at <= span:
            raise ValueError(f"link {link} is {span:g} km long: no point at {distance_km!r} km")
        fault = FibreFault(link, at, loss_db, kind)
        with self._lock:
            self._faults[link].append(fault)
        self._notify("faults")
        return fault

    def clear_fibre_faults(self, link: str | None = None) -> None:
        """Repair `link` (or every link)."""
        with self._lock:
            for link_id in self._faults if link is None else [self._link(link).id]:
                self._faults[link_id] = []
        self._notify("faults")

    def fibre_faults(self, link: str) -> tuple[FibreFault, ...]:
        self._link(link)
        with self._lock:
            return tuple(self._faults[link])

    def extra_loss_db(self, link: str) -> float:
        """The sum of the link's faults' losses."""
        return sum((f.loss_db for f in self.fibre_faults(link)), 0.0)

    def link_loss_db(self, link: str, band: str = "C") -> float:
        """The link's end-to-end loss now: its C-band loss (x the O-band factor in the O-band),
        plus its faults, plus a small temperature-driven swing."""
        base = self._link(link).loss_db
        if band == "O":
            base *= self.topology.behaviour.o_band_loss_factor
        elif band != "C":
            raise ValueError(f"band is C or O, not {band!r}")
        swing = LINK_SWING_DB * self._swing[link](self.clock.now())
        return base + self.extra_loss_db(link) + swing

    # -- switches -------------------------------------------------------------------------

    def set_cross_connects(self, switch: str, pairs: Mapping[str, str]) -> None:
        """The switch's committed map: light entering at port `key` leaves at port `value`
        (the topology's initial map joins its pairs both ways)."""
        names = {p.name for p in self._switch(switch).ports}
        unknown = sorted({n for pair in pairs.items() for n in pair} - names)
        if unknown:
            raise ValueError(f"switch {switch} has no port {', '.join(unknown)}")
        with self._lock:
            self._maps[switch] = dict(pairs)
        self._notify("switch")

    def cross_connects(self, switch: str) -> dict[str, str]:
        self._switch(switch)
        with self._lock:
            return dict(self._maps[switch])

    def path_extra_loss_db(self, channel: Channel) -> float | None:
        """None when the channel's path is not lit (a cross-connect it needs is not made);
        else its links' fault losses plus the insertion loss of the switches it crosses
        beyond the published baseline (`behaviour.switch_loss_db` each)."""
        return self._path_loss(self._index(channel))

    def lit(self, channel: Channel) -> bool:
        """Whether the switches make the channel's path (fibre faults aside)."""
        return self._lit(self._joins[self._index(channel)])

    # -- key generation -------------------------------------------------------------------

    def channel_model(self, channel: Channel) -> ChannelModel:
        return self.channels[self._index(channel)]

    def channel_skr_bps(self, channel: Channel) -> float:
        """The channel's secret key rate now: 0 when dark, broken or in maintenance."""
        return self.channel_model(channel).key_rate_at(self.clock.now())

    def pair_generation_bps(self, site_a: str, site_b: str) -> float:
        """Key generated now between two sites: the sum over the channels joining them."""
        channels = self._between.get(frozenset((site_a, site_b)), [])
        return sum((self.channel_skr_bps(c) for c in channels), 0.0)

    # -- devices and demand (the control API's other knobs) --------------------------------

    def set_device_up(self, name: str, up: bool) -> None:
        """Take a device of any family down (it stops answering) or bring it back."""
        with self._lock:
            if up:
                self._down.discard(name)
            else:
                self._down.add(name)
        self._notify("devices")

    def device_up(self, name: str) -> bool:
        with self._lock:
            return name not in self._down

    def set_consumption(self, site_a: str, site_b: str, bps: float) -> None:
        """Extra key demand between two sites (a surge), which the key sims drain."""
        if not math.isfinite(bps) or bps < 0:
            raise ValueError(f"consumption must be a number of bit/s >= 0, not {bps!r}")
        if not self.topology.channels_between(site_a, site_b):
            raise ValueError(f"no quantum channel joins {site_a} and {site_b}")
        with self._lock:
            self._consumption[frozenset((site_a, site_b))] = bps
        self._notify("consumption")

    def consumption_bps(self, site_a: str, site_b: str) -> float:
        with self._lock:
            return self._consumption.get(frozenset((site_a, site_b)), 0.0)

    # -- observers ------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call `callback(what)` after each change: "faults", "switch", "devices",
        "consumption"."""
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[str], None]) -> None:
        """Stop calling `callback` (a simulator stopped before the model)."""
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def state(self) -> dict[str, Any]:
        """The model's state as JSON-ready data (the control API's --state)."""
        with self._lock:
            faults = {k: [asdict(f) for f in v] for k, v in self._faults.items() if v}
            maps = {k: dict(v) for k, v in self._maps.items()}
            down = sorted(self._down)
            demand = [
                {"sites": sorted(pair), "bps": bps} for pair, bps in self._consumption.items()
            ]
        channels = []
        for index, channel in enumerate(self.topology.channels):
            extra = self._path_loss(index)
            channels.append(
                {
                    "index": index,
                    "link": channel.link,
                    "alice": channel.alice,
                    "bob": channel.bob,
                    "band": channel.band,
                    "itu": channel.itu,
                    "lit": self._lit(self._joins[index]),
                    "extra_loss_db": extra,
                    "skr_bps": self.channels[index].key_rate_at(self.clock.now()),
                }
            )
        return {
            "time_s": self.clock.now(),
            "fibre_faults": faults,
            "cross_connects": maps,
            "devices_down": down,
            "consumption": demand,
            "channels": channels,
        }

    # -- internals ------------------------------------------------------------------------

    def _notify(self, what: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(what)

    def _link(self, link: str):
        try:
            return self.topology.link(link)
        except StopIteration:
            raise ValueError(f"no link {link!r} in {self.topology.name}") from None

    def _switch(self, switch: str):
        found = next((s for s in self.topology.switches if s.name == switch), None)
        if found is None:
            raise ValueError(f"no switch {switch!r} in {self.topology.name}")
        return found

    def _index(self, channel: Channel) -> int:
        for index, known in enumerate(self.topology.channels):
            if known is channel:
                return index
        try:
            return self.topology.channels.index(channel)
        except ValueError:
            raise ValueError(
                f"channel {channel.link} {channel.alice} -> {channel.bob} is not "
                f"in {self.topology.name}"
            ) from None

    def _joined(self, join: Join) -> bool:
        pairs = self._maps[join.switch]
        return pairs.get(join.a) == join.b

    def _lit(self, joins: list[Join]) -> bool:
        with self._lock:
            return all(self._joined(join) for join in joins)

    def _path_loss(self, index: int) -> float | None:
        joins = self._joins[index]
        if not self._lit(joins):
            return None
        baseline = self.topology.behaviour.switch_loss_db
        extra = sum(self.extra_loss_db(link) for link in self.topology.channels[index].link_ids)
        for join in joins:
            loss = self._switch(join.switch).insertion_loss_db
            extra += (baseline if loss is None else loss) - baseline
        return extra

    def _path_loss_of(self, index: int) -> Callable[[], float | None]:
        return lambda: self._path_loss(index)

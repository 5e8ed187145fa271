"""The twin's key chain: a key manager (KME) per node, the link encryptors and the QRNG, all
following the one model (`TwinModel`).

Each pair of sites whose KMEs share key has ONE stock (`KeyStock` of sims/kme), reported by
both KMEs (each with its own SAE as master): key shared over QKD is the same at both ends,
and a key an encryptor takes at one end is gone at the other. The stock fills at the model's
generation between the two sites (`pair_generation_bps`: a fibre break or a dark switched path
stops it) and drains by

- the refreshes of the encryptors between the two sites (one key each refresh period of
  simulated time; an empty stock makes them fall back to classical keys, with the state, event
  and trap of sims/encryptor.py, and recover when key returns), and
- a background consumer: the other applications of the two nodes, taking `BACKGROUND_SHARE` of
  the pair's nominal generation, plus the surge the control API sets
  (`TwinModel.set_consumption`, `qkdtel sims fault --consumption A:B=BPS`).

The model answers for the present only, so a thread settles every stock at the current rates
every `SETTLE_PERIOD_S` real seconds (and the rates hold in between). A device the model marks
down stops answering (a KME's or the QRNG's port closes, an encryptor's agent goes silent), and
the encryptors drawing from a KME that is down fail their key fetches.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qkdtel.sims.certs import TestPki, make_pki
from qkdtel.sims.encryptor import (
    Association,
    BackgroundEncryptors,
    EncryptorAgent,
    EncryptorModel,
    Port,
)
from qkdtel.sims.kme.cli import device_entry, encryptor_entry
from qkdtel.sims.kme.kme import KeyStock, SaePair, SimulatedKme
from qkdtel.sims.qrng import SimulatedQrng
from qkdtel.sims.topology import Encryptor, KeyManager, Topology
from qkdtel.sims.twin.model import TwinModel

KEY_SIZE_BITS = 256
STOCK_HOURS = 1.0
"""A pair's stock holds an hour of its published generation (invented: KME sizes are not
published); it starts half full."""
MIN_STOCK_KEYS = 1000
BACKGROUND_SHARE = 0.3
"""Share of a pair's nominal generation the other applications take (invented). Below the
generation, so a healthy pair's stock fills; a maintenance window (about 2 h a week) takes
less than the hour held, so it does not empty a full stock; a break empties a half-full
one in about 100 simulated minutes."""
SETTLE_PERIOD_S = 0.1
PROFILES: dict[str, Literal["adva_otn", "sitline_eth"]] = {"L1": "adva_otn", "L2": "sitline_eth"}


class PairGeneration:
    """The model's key generation between two sites, as the `KeySource` a stock fills from."""

    def __init__(self, model: TwinModel, site_a: str, site_b: str):
        self.model = model
        self.site_a = site_a
        self.site_b = site_b
        self._last: tuple[float, float] | None = None  # (simulated time, generation then)

    def key_rate_at(self, t: float) -> float:
        """The generation now, whatever `t` (the model has no other time; stocks are settled
        often). Asked once per simulated instant: a stock brought over a long span asks at
        every step of it, and the answer cannot change until the clock moves."""
        now = self.model.clock.now()
        last = self._last
        if last is None or last[0] != now:
            last = self._last = (now, self.model.pair_generation_bps(self.site_a, self.site_b))
        return last[1]


@dataclass
class PairStock:
    """The one stock of key two sites' KMEs share, and its background demand."""

    site_a: str
    site_b: str
    stock: KeyStock
    background_bps: float


def published_bps(
    topology: Topology, site_a: str, site_b: str, *, lit_only: TwinModel | None
) -> float:
    """Sum of the published key rates of the channels joining two sites (with `lit_only`,
    only those whose path that model's switches make)."""
    channels = topology.channels_between(site_a, site_b)
    if lit_only is not None:
        channels = [c for c in channels if lit_only.lit(c)]
    return sum(c.skr_kbps for c in channels) * 1000.0


def pair_stock(model: TwinModel, site_a: str, site_b: str) -> PairStock:
    """A pair's stock sized on its published generation; background demand on the part of it
    the switches light now (a dark switched path has none: nobody plans on its key)."""
    planned = published_bps(model.topology, site_a, site_b, lit_only=None)
    capacity = max(MIN_STOCK_KEYS, math.ceil(STOCK_HOURS * 3600 * planned / KEY_SIZE_BITS))
    background = BACKGROUND_SHARE * published_bps(model.topology, site_a, site_b, lit_only=model)
    stock = KeyStock(
        PairGeneration(model, site_a, site_b),
        encryptors=0,  # the encryptor agents take their keys refresh by refresh
        key_size_bits=KEY_SIZE_BITS,
        max_key_count=capacity,
        stored=capacity / 2,
        consumer_bps=background + model.consumption_bps(site_a, site_b),
    )
    return PairStock(site_a, site_b, stock, background)


def pair_stocks(model: TwinModel) -> dict[frozenset[str], PairStock]:
    """One stock per pair of sites whose key managers list each other."""
    stocks: dict[frozenset[str], PairStock] = {}
    for kme in model.topology.key_managers:
        for peer in kme.peers:
            key = frozenset((kme.site, peer))
            if key not in stocks:
                stocks[key] = pair_stock(model, kme.site, peer)
    return stocks


def _kme_at(topology: Topology, site: str) -> KeyManager:
    return next(k for k in topology.key_managers if k.site == site)


def start_kme(
    model: TwinModel,
    kme: KeyManager,
    stocks: dict[frozenset[str], PairStock],
    pki: TestPki,
    host: str,
) -> SimulatedKme:
    """A node's KME serving its SAE's pairs toward each peer (the stocks it shares)."""
    pairs: dict[SaePair, KeyStock] = {}
    targets: dict[SaePair, str] = {}
    for peer in kme.peers:
        other = _kme_at(model.topology, peer)
        pair = SaePair(kme.sae_id, other.sae_id)
        pairs[pair] = stocks[frozenset((kme.site, peer))].stock
        targets[pair] = other.name
    first = targets[next(iter(pairs))]  # every pair has its target: this one is not read
    return SimulatedKme(kme.name, first, pairs, model.clock, pki, targets=targets, host=host)


def encryptor_agent(
    model: TwinModel, encryptor: Encryptor, index: int, stocks: dict[frozenset[str], PairStock]
) -> EncryptorAgent:
    """An encryptor at the end of its key manager, one association toward the other end,
    refreshing its key from the pair's stock every `refresh_s` of simulated time."""
    site = next(k.site for k in model.topology.key_managers if k.name == encryptor.key_manager)
    peer = encryptor.b if site == encryptor.a else encryptor.a
    stock = stocks[frozenset((encryptor.a, encryptor.b))].stock
    seed = model.seed + index
    if encryptor.layer == "L1":  # ADVA-class OTN: keys over ETSI GS QKD 014, QKD keys only
        port = Port(1, "otu4-1", speed_mbps=100_000, load=0.6, seed=seed)
        association = Association(1, port, peer, "etsi014", "qkd", stock, encryptor.refresh_s)
    else:  # SITLine-class Ethernet: keys over ETSI GS QKD 004, hybrid with classical keys
        port = Port(1, "eth-1/1", load=0.4, seed=seed)
        association = Association(1, port, peer, "etsi004", "hybrid", stock, encryptor.refresh_s)
    profile = PROFILES[encryptor.layer]
    return EncryptorAgent(
        encryptor.name, site, EncryptorModel(profile, [port], [association]), model.clock
    )


class KeySims:
    """The running key chain of the twin (see the module); `stop` ends all of it."""

    def __init__(
        self,
        model: TwinModel,
        pki: TestPki,
        stocks: dict[frozenset[str], PairStock],
        kmes: list[SimulatedKme],
        qrng: SimulatedQrng | None,
        agents: list[EncryptorAgent],
        encryptors: BackgroundEncryptors,
    ):
        self.model = model
        self.pki = pki
        self.stocks = stocks
        self.kmes = kmes
        self.qrng = qrng
        self.agents = agents
        self._encryptors = encryptors
        self._stop = threading.Event()
        self._settler = threading.Thread(
            target=self._settle, name="qkdtel-twin-key-stocks", daemon=True
        )
        self._settler.start()
        model.subscribe(self._changed)
        self._follow_devices()

    def devices(
        self, *, interval: float = 10.0, timeout: float = 5.0, v3: bool = False
    ) -> list[dict[str, Any]]:
        """Collector `devices:` entries polling every KME, the QRNG and every encryptor (over
        SNMPv3 authPriv with `v3`)."""
        topology = self.model.topology
        timing = {"interval": interval, "timeout": timeout}
        entries = []
        for kme in self.kmes:
            spec = next(k for k in topology.key_managers if k.name == kme.kme_id)
            pairs = [{"master_sae_id": p.master, "slave_sae_id": p.slave} for p in kme.stocks]
            entries.append(
                device_entry(
                    kme.kme_id,
                    "etsi014",
                    self._tags(spec.site),
                    pki=self.pki,
                    url=kme.url,
                    sae_pairs=pairs,
                    **timing,
                )
            )
        if self.qrng is not None and topology.qrng is not None:
            entries.append(
                device_entry(
                    topology.qrng.name,
                    "qrng",
                    self._tags(topology.qrng.site),
                    pki=self.pki,
                    url=self.qrng.url,
                    **timing,
                )
            )
        for agent in self.agents:
            entries.append(encryptor_entry(agent, self._tags(agent.site), v3=v3, **timing))
        return entries

    def stop(self) -> None:
        """Stop settling, serving and refreshing (the model keeps this object subscribed: its
        callbacks do nothing from now on)."""
        self._stop.set()
        self._settler.join(timeout=5.0)
        self._encryptors.stop()
        for kme in self.kmes:
            kme.close()
        if self.qrng is not None:
            self.qrng.close()

    def _tags(self, site: str) -> dict[str, str]:
        return {"node": site, "domain": self.model.topology.site(site).domain}

    def _settle(self) -> None:
        """Bring every stock to now at the present rates, often (see the module)."""
        while not self._stop.wait(SETTLE_PERIOD_S):
            now = self.model.clock.now()
            for pair in self.stocks.values():
                pair.stock.count_at(now)

    def _changed(self, what: str) -> None:
        """The model changed: follow the demand and the devices taken down or brought back."""
        if self._stop.is_set():
            return
        if what == "consumption":
            now = self.model.clock.now()
            for pair in self.stocks.values():
                surge = self.model.consumption_bps(pair.site_a, pair.site_b)
                pair.stock.set_consumer_bps(pair.background_bps + surge, now)
        elif what == "devices":
            self._follow_devices()

    def _follow_devices(self) -> None:
        up = self.model.device_up
        for kme in self.kmes:
            (kme.server.up if up(kme.kme_id) else kme.server.down)()
        if self.qrng is not None and self.model.topology.qrng is not None:
            (self.qrng.server.up if up(self.model.topology.qrng.name) else self.qrng.server.down)()
        kme_of = {e.name: e.key_manager for e in self.model.topology.encryptors}
        for agent in self.agents:
            agent.unresponsive = not up(agent.name)
            for association in agent.model.associations:
                association.qkd_available = up(kme_of[agent.name])


def start_key_sims(
    model: TwinModel,
    *,
    workdir: Path,
    host: str = "127.0.0.1",
    trap_target: tuple[str, int] | None = None,
    trap_version: str = "2c",
) -> KeySims:
    """Start, in this process, the key managers, encryptors and QRNG of `model.topology`
    (certificates written under `workdir`/pki; the encryptors' traps go to `trap_target`, as
    SNMP `trap_version` 2c or 3 traps with their agents' credentials).
    OSError/RuntimeError/TimeoutError when something cannot start (nothing is left running)."""
    pki = make_pki(Path(workdir) / "pki")
    stocks = pair_stocks(model)
    kmes: list[SimulatedKme] = []
    qrng: SimulatedQrng | None = None
    try:
        for kme in model.topology.key_managers:
            if kme.peers:  # a KME sharing key with nobody has no status to serve
                kmes.append(start_kme(model, kme, stocks, pki, host))
        spec = model.topology.qrng
        if spec is not None:
            qrng = SimulatedQrng(spec.name, model.clock, pki, seed=model.seed, host=host)
        agents = [
            encryptor_agent(model, encryptor, i, stocks)
            for i, encryptor in enumerate(model.topology.encryptors)
        ]
        encryptors = BackgroundEncryptors(
            agents, trap_target=trap_target, host=host, trap_version=trap_version
        ).start()
    except BaseException:
        for started in kmes:
            started.close()
        if qrng is not None:
            qrng.close()
        raise
    return KeySims(model, pki, stocks, kmes, qrng, agents, encryptors)

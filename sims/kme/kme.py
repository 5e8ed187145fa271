"""A simulated key manager (KME): key stock per SAE pair, served over ETSI GS QKD 014.

The stock of a pair fills at the secret key rate of the QKD link behind it (the SNMP
simulators' `ChannelModel`, so its noise, drifts and maintenance windows show here too) and
drains at the refresh rate of the encryptors using it (each takes one key per refresh). A
link outage (`KeyStock.link_up = False`) stops the filling, so the stock visibly runs dry.

Only `status` is answered (ETSI GS QKD 014 section 5.1). `enc_keys` and `dec_keys` answer
404: the collector must never ask for them, and every path asked is recorded
(`SimulatedKme.requests`) so a test can show it never did. `serve_keys_instead = True` makes
the status call answer what `enc_keys` would (a `keys` array of random bytes): the collector
must refuse it.
"""

from __future__ import annotations

import base64
import math
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from qkdtel.sims.certs import TestPki
from qkdtel.sims.clock import SimClock
from qkdtel.sims.https_server import Fault, MtlsJsonServer
from qkdtel.sims.snmp.noise import Excursion, stream_id
from qkdtel.sims.snmp.physics import Behaviour, ChannelModel, ChannelParams

_STATUS = re.compile(r"^/api/v1/keys/([^/?#]+)/status$")
MAX_STEP_S = 10.0


def link_channel(name: str, skr_bps: float, seed: int = 7) -> ChannelModel:
    """A DV QKD link's channel model (as in the SNMP simulators) feeding a KME's stock."""
    params = ChannelParams(name=name, family="dv", skr_bps=skr_bps, loss_db=6.0, qber=0.03)
    return ChannelModel(params, seed, Behaviour(), Excursion(seed, stream_id(name, "thermal")))


class KeySource(Protocol):
    """What fills a stock: a QKD link's secret key rate (a `ChannelModel`, or the twin's
    generation between two sites) at a simulated time."""

    def key_rate_at(self, t: float) -> float: ...


@dataclass
class KeyStock:
    """The keys a KME holds for one SAE pair, advanced in simulated time."""

    channel: KeySource
    encryptors: int = 2
    refresh_interval_s: float = 1.0
    key_size_bits: int = 256
    max_key_count: int = 1000
    stored: float = 500.0
    link_up: bool = True
    """Knob: False is a link outage (no key produced); the encryptors keep draining."""
    consumer_bps: float = 0.0
    """Key taken by other applications than the counted encryptors, in bit/s (demand)."""
    _t: float | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """The KME's server thread and an encryptor agent's loop read and take from one stock."""

    def fill_keys_per_s(self, t: float) -> float:
        if not self.link_up:
            return 0.0
        return self.channel.key_rate_at(t) / self.key_size_bits

    @property
    def drain_keys_per_s(self) -> float:
        return self.encryptors / self.refresh_interval_s + self.consumer_bps / self.key_size_bits

    def set_consumer_bps(self, bps: float, t: float) -> None:
        """Change the demand from simulated time `t` on (the stock is brought up to `t` at
        the old demand first)."""
        with self._lock:
            self._advance(t)
            self.consumer_bps = bps

    def count_at(self, t: float) -> int:
        """Whole keys in stock at simulated time `t` (never going back)."""
        with self._lock:
            return self._advance(t)

    def take(self, t: float) -> bool:
        """Take one key at simulated time `t` (an encryptor's refresh); False if none is left."""
        with self._lock:
            if self._advance(t) < 1:
                return False
            self.stored -= 1
            return True

    def _advance(self, t: float) -> int:
        if self._t is None:
            self._t = t
        span = max(0.0, t - self._t)
        steps = math.ceil(span / MAX_STEP_S)
        for i in range(steps):
            h = span / steps
            mid = self._t + (i + 0.5) * h
            net = self.fill_keys_per_s(mid) - self.drain_keys_per_s
            self.stored = min(float(self.max_key_count), max(0.0, self.stored + net * h))
        self._t = max(self._t, t)
        return int(self.stored)


@dataclass(frozen=True)
class SaePair:
    master: str
    slave: str


class SimulatedKme:
    """One KME: its ID, its peer KME, stocks per SAE pair, an HTTPS server with mTLS."""

    def __init__(
        self,
        kme_id: str,
        peer_kme_id: str,
        stocks: dict[SaePair, KeyStock],
        clock: SimClock,
        pki: TestPki,
        *,
        targets: Mapping[SaePair, str] | None = None,
        host: str = "127.0.0.1",
    ):
        """`targets`: the KME at the slave SAE's end per pair, for a KME with several peers
        (default: `peer_kme_id` for every pair)."""
        self.kme_id = kme_id
        self.peer_kme_id = peer_kme_id
        self.targets = dict(targets or {})
        self.stocks = stocks
        self.clock = clock
        self.serve_keys_instead = False
        self.server = MtlsJsonServer(self._route, str(pki.ca), pki.server, host)

    @property
    def url(self) -> str:
        return self.server.url

    def requests(self) -> list[str]:
        """Every path asked of this KME."""
        return self.server.requests()

    def set_fault(self, fault: Fault) -> None:
        self.server.fault = fault

    def _route(self, path: str) -> tuple[int, object]:
        match = _STATUS.match(path)
        if match is None:
            return 404, {"message": "not served by this simulator (status only)"}
        pair = next((p for p in self.stocks if p.slave == match.group(1)), None)
        if pair is None:
            return 400, {"message": "unknown slave_SAE_ID"}
        if self.serve_keys_instead:
            return 200, {"keys": [_fake_key() for _ in range(2)]}
        stock = self.stocks[pair]
        count = stock.count_at(self.clock.now())
        return 200, {
            "source_KME_ID": self.kme_id,
            "target_KME_ID": self.targets.get(pair, self.peer_kme_id),
            "master_SAE_ID": pair.master,
            "slave_SAE_ID": pair.slave,
            "key_size": stock.key_size_bits,
            "stored_key_count": count,
            "max_key_count": stock.max_key_count,
            "max_key_per_request": 128,
            "max_key_size": 1024,
            "min_key_size": 64,
            "max_SAE_ID_count": 0,
        }

    def close(self) -> None:
        self.server.down()


def _fake_key() -> dict[str, str]:
    """What `enc_keys` answers per key: random bytes standing in for key material."""
    return {"key_ID": str(uuid.uuid4()), "key": base64.b64encode(os.urandom(32)).decode()}

"""Pytest fixtures for the HTTPS devices (key managers over ETSI GS QKD 014, the QRNG).

Fixtures
--------
``pki`` (session)
    A `TestPki` (sims/certs.py) made once: network CA, server and client certificates (the
    client key encrypted with ``PKI_KEY_PASSWORD``), and an unrelated CA with its own client
    and server certificates.

``kme_sim`` (function scope, a factory)
    ``kme_sim(kme_id="KME-Quevedo", pairs=(("enc-quevedo", "enc-norte"),), speed=1.0, **stock)``
    serves a `SimulatedKme` on a free loopback port; each pair gets a `KeyStock` built from
    ``stock`` (link_up, stored, encryptors, ...). Returns a `KmeBench`: ``sim``, ``stocks`` and
    ``device(name, **overrides)``, the configuration entry of a device polling it. Closed after
    the test.

``qrng_sim`` (function scope, a factory)
    ``qrng_sim(serial="QRNG-Quevedo-01", speed=1.0)`` serves a `SimulatedQrng`; returns a
    `QrngBench`: ``sim`` and ``device(name, **overrides)``. Closed after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from qkdtel.sims.certs import TestPki, make_pki
from qkdtel.sims.clock import AcceleratedClock
from qkdtel.sims.kme.kme import KeyStock, SaePair, SimulatedKme, link_channel
from qkdtel.sims.qrng import SimulatedQrng

PKI_KEY_PASSWORD = "client-key-passphrase-7Hq"


def tls_options(pki: TestPki, **overrides: Any) -> dict[str, Any]:
    """The `tls:` section of a device trusting the network CA with the network's client."""
    return {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client.cert),
        "key_file": str(pki.client.key),
        "key_password": PKI_KEY_PASSWORD,
        **overrides,
    }


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"), client_key_password=PKI_KEY_PASSWORD)


@dataclass
class KmeBench:
    sim: SimulatedKme
    stocks: dict[SaePair, KeyStock]
    pki: TestPki

    def device(self, name: str, **overrides: Any) -> dict[str, Any]:
        """A device entry polling this KME for every pair it serves."""
        return {
            "name": name,
            "driver": "etsi014",
            "interval": 0.2,
            "timeout": 2,
            "tags": {"node": self.sim.kme_id.removeprefix("KME-")},
            "url": self.sim.url,
            "tls": tls_options(self.pki),
            "sae_pairs": [
                {"master_sae_id": p.master, "slave_sae_id": p.slave} for p in self.stocks
            ],
            **overrides,
        }


@pytest.fixture
def kme_sim(pki: TestPki) -> Iterator[Any]:
    started: list[SimulatedKme] = []

    def start(
        kme_id: str = "KME-Quevedo",
        pairs: tuple[tuple[str, str], ...] = (("enc-quevedo", "enc-norte"),),
        speed: float = 1.0,
        skr_bps: float = 2857.1,
        **stock: Any,
    ) -> KmeBench:
        stocks = {
            SaePair(m, s): KeyStock(link_channel(f"{kme_id}:{s}", skr_bps), **stock)
            for m, s in pairs
        }
        sim = SimulatedKme(kme_id, "KME-peer", stocks, AcceleratedClock(speed), pki)
        started.append(sim)
        return KmeBench(sim, stocks, pki)

    yield start
    for sim in started:
        sim.close()


@dataclass
class QrngBench:
    sim: SimulatedQrng
    pki: TestPki

    def device(self, name: str, **overrides: Any) -> dict[str, Any]:
        """A device entry polling this QRNG."""
        return {
            "name": name,
            "driver": "qrng",
            "interval": 0.2,
            "timeout": 2,
            "url": self.sim.url,
            "tls": tls_options(self.pki),
            **overrides,
        }


@pytest.fixture
def qrng_sim(pki: TestPki) -> Iterator[Any]:
    started: list[SimulatedQrng] = []

    def start(serial: str = "QRNG-Quevedo-01", speed: float = 1.0) -> QrngBench:
        sim = SimulatedQrng(serial, AcceleratedClock(speed), pki)
        started.append(sim)
        return QrngBench(sim, pki)

    yield start
    for sim in started:
        sim.close()

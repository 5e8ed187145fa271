"""Key delivery end to end (issue 10): a QKD link's outage drains the KME's key stock that an
encryptor refreshes its keys from; the daemon polls both, over ETSI GS QKD 014 (HTTPS, mutual
TLS) and SNMP, and InfluxDB shows the stock running dry and the encryptor falling back to
classical keys, then both recovering when the link returns."""

from __future__ import annotations

import asyncio

import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from qkdtel.sdk import Sample
from qkdtel.sims.clock import AcceleratedClock
from qkdtel.sims.encryptor import (
    Association,
    BackgroundEncryptors,
    EncryptorAgent,
    EncryptorModel,
    Port,
)
from qkdtel.sims.kme.kme import KeyStock, SaePair, SimulatedKme, link_channel
from tests.collector_run import collector_document
from tests.fixtures_https import tls_options
from tests.test_etsi014 import assert_status_only


class Outage:
    """The scenario, driven by what the daemon sees (not by timers: start-up takes a varying
    time): cut the link after three polls of a full stock; bring it back three polls after
    the stock was seen empty."""

    def __init__(self, stock: KeyStock):
        self.stock = stock
        self.counts: list[int] = []
        self.empty_polls = 0
        self.restored = False

    def __call__(self, samples: list[Sample]) -> None:
        for sample in samples:
            if sample.measurement != "kme_key_store":
                continue
            self.counts.append(int(sample.fields["stored_key_count"]))
            if len(self.counts) == 3:
                self.stock.link_up = False
            self.empty_polls += self.counts[-1] == 0
            if self.empty_polls == 3 and not self.restored:
                self.stock.link_up = self.restored = True


def test_a_link_outage_drains_the_kme_and_the_encryptor_falls_back(
    tmp_path, influxdb, influx_db, pki
):
    clock = AcceleratedClock(speed=20)
    # a full stock of 60 keys; the encryptor takes one key per half simulated second, 40 per
    # real second: once the link is cut the stock runs dry in 1.5 s
    stock = KeyStock(link_channel("4", 1400.0), encryptors=0, stored=60.0, max_key_count=60)
    pair = SaePair("enc-quevedo", "enc-norte")
    kme = SimulatedKme("KME-Quevedo", "KME-Norte", {pair: stock}, clock, pki)
    port = Port(1, "eth-1/1")
    model = EncryptorModel(
        "sitline_eth",
        [port],
        [Association(1, port, "Norte", "etsi004", "hybrid", stock, refresh_interval_s=0.5)],
    )
    agent = EncryptorAgent("enc-quevedo", "Quevedo", model, clock)
    kme_device = {
        "name": "kme-quevedo",
        "driver": "etsi014",
        "interval": 0.2,
        "timeout": 2,
        "url": kme.url,
        "tls": tls_options(pki),
        "sae_pairs": [{"master_sae_id": pair.master, "slave_sae_id": pair.slave}],
    }
    scenario = Outage(stock)
    try:
        with BackgroundEncryptors([agent]):
            encryptor_device = {
                "name": "enc-quevedo",
                "driver": "encryptor_snmp",
                "interval": 0.2,
                "timeout": 2,
                "address": f"127.0.0.1:{agent.port}",
                "profile": "sitline_eth",
            }
            document = collector_document(tmp_path, [kme_device, encryptor_device])
            document["sinks"] = [
                {"type": "influxdb_v1", "url": influxdb.url, "database": influx_db}
            ]
            loaded = load_config_text(yaml.safe_dump(document))
            asyncio.run(Collector(loaded, observers=[scenario]).run(duration=6.0))
    finally:
        kme.close()
    assert scenario.restored, scenario.counts

    def events(measurement: str, field: str) -> list[tuple[str, int]]:
        """(event, time) of every point, oldest first (InfluxQL selects need a field)."""
        rows = influxdb.query(f'SELECT "{field}", "event" FROM "{measurement}"', influx_db)
        return [(r["event"], r["time"]) for r in rows]

    kme_events = events("kme_event", "stored_key_count")
    encryptor_events = events("encryptor_event", "state")
    assert [e for e, _ in kme_events] == ["key_store_empty", "key_store_refilled"]
    assert [e for e, _ in encryptor_events] == ["classical_fallback", "qkd_restored"]
    # the stock ran dry and the encryptor fell back within a poll or two of each other
    assert abs(kme_events[0][1] - encryptor_events[0][1]) < 1e9
    assert abs(kme_events[1][1] - encryptor_events[1][1]) < 1e9

    (drain,) = influxdb.query(
        "SELECT median(net_drain_keys_per_s) FROM kme_key_store WHERE net_drain_keys_per_s > 0",
        influx_db,
    )
    (lowest,) = influxdb.query("SELECT min(stored_key_count) FROM kme_key_store", influx_db)
    # ~40 keys per real second while draining; the median, as a poll started late then one on
    # time measure over a short gap in whole keys
    assert 20 < drain["median"] < 80 and lowest["min"] == 0
    (assoc,) = influxdb.query(
        "SELECT max(key_fetch_failures_total), last(state), last(key_source) "
        "FROM encryptor_association",
        influx_db,
    )
    assert assoc["max"] > 0 and assoc["last"] == "encrypting" and assoc["last_1"] == "hybrid"
    assert_status_only(kme)

"""Encryptors over SNMP (issue 10): simulated L2 (SITLine ETH class) and L1 OTN (ADVA class)
agents serving IF-MIB and QKDTEL-ENCRYPTOR-MIB on loopback, polled by the `encryptor_snmp`
driver (the QKD driver's SNMP layer) through the daemon into a real InfluxDB."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from qkdtel.sims.clock import AcceleratedClock
from qkdtel.sims.encryptor import (
    Association,
    BackgroundEncryptors,
    EncryptorAgent,
    EncryptorModel,
    Port,
)
from qkdtel.sims.influxd import free_port
from qkdtel.sims.kme.kme import KeyStock, link_channel
from qkdtel.sims.snmp.agent import Faults
from tests.collector_run import Recorder, collector_document
from tests.metrics_doc import load_contract
from tests.test_etsi014 import poll_once
from tests.test_metrics_contract import violations


@dataclass
class Encryptors:
    l2: EncryptorAgent
    l1: EncryptorAgent
    stock: KeyStock  # the KME stock the L2's QKD-only association draws from
    trap_target: tuple[str, int]  # where the agents send their traps

    def devices(self) -> list[dict]:
        return [
            {
                "name": agent.name,
                "driver": "encryptor_snmp",
                "interval": 0.2,
                "timeout": 2,
                "tags": {"node": agent.site},
                "address": f"127.0.0.1:{agent.port}",
                "profile": agent.model.profile,
            }
            for agent in (self.l2, self.l1)
        ]


@pytest.fixture
def encryptors() -> Iterator[Encryptors]:
    clock = AcceleratedClock(speed=1.0)
    # encryptors=0: this stock is drained by the association's own refreshes, key by key
    # and fills slowly (one 256-bit key per second): the refreshes visibly drain it
    stock = KeyStock(link_channel("l4", 256.0), encryptors=0, stored=200.0)
    ports = [Port(1, "eth-1/1", load=0.4), Port(2, "eth-1/2", load=0.1, up=False)]
    l2 = EncryptorModel(
        "sitline_eth",
        ports,
        [
            Association(1, ports[0], "Norte", "etsi004", "qkd", stock, refresh_interval_s=0.1),
            Association(2, ports[1], "Norte", "etsi004", "hybrid", refresh_interval_s=0.5),
        ],
    )
    otn = Port(1, "otu4-1", speed_mbps=100_000, load=0.7)
    l1 = EncryptorModel(
        "adva_otn", [otn], [Association(1, otn, "Quevedo", "etsi014", "qkd", None, 0.5)]
    )
    agents = [EncryptorAgent("enc-quevedo", "Quevedo", l2, clock)]
    agents.append(EncryptorAgent("otn-norte", "Norte", l1, clock))
    target = ("127.0.0.1", free_port())
    with BackgroundEncryptors(agents, trap_target=target):
        yield Encryptors(agents[0], agents[1], stock, target)


def run(tmp_path, devices, seconds, observers=(), **document) -> Recorder:
    recorder = Recorder()
    config = {**collector_document(tmp_path, devices), **document}
    loaded = load_config_text(yaml.safe_dump(config))
    asyncio.run(Collector(loaded, observers=[recorder, *observers]).run(duration=seconds))
    return recorder


def test_ports_and_associations_flow_into_influxdb(tmp_path, influxdb, influx_db, encryptors):
    sinks = [{"type": "influxdb_v1", "url": influxdb.url, "database": influx_db}]
    recorder = run(tmp_path, encryptors.devices(), 2.0, sinks=sinks)
    assert violations(recorder.samples, load_contract()) == []

    ports = influxdb.query(
        "SELECT last(link_up), last(speed_bps), last(rx_bps), last(in_errors_total) "
        'FROM encryptor_port GROUP BY "device", "port", "layer", "vendor"',
        influx_db,
    )
    by_port = {(r["device"], r["port"]): r for r in ports}
    assert set(by_port) == {("enc-quevedo", "eth-1/1"), ("enc-quevedo", "eth-1/2"),
                            ("otn-norte", "otu4-1")}  # fmt: skip
    up, down, otn = by_port.values()
    assert up["last"] is True and down["last"] is False and otn["layer"] == "l1"
    assert up["last_1"] == 10e9 and otn["last_1"] == 100e9 and otn["vendor"] == "adva"
    assert 0.1 * 10e9 < up["last_2"] < 0.7 * 10e9  # ~40 % of 10 Gbit/s
    assert up["last_3"] == 0

    assocs = influxdb.query(
        "SELECT last(key_source), last(state), last(key_refreshes_total), "
        'last(seconds_since_refresh) FROM encryptor_association GROUP BY "device", '
        '"key_interface", "port"',
        influx_db,
    )
    seen = {(r["device"], r["port"], r["key_interface"], r["last"], r["last_1"]) for r in assocs}
    assert seen == {
        ("enc-quevedo", "eth-1/1", "etsi004", "qkd", "encrypting"),
        ("enc-quevedo", "eth-1/2", "etsi004", "hybrid", "encrypting"),
        ("otn-norte", "otu4-1", "etsi014", "qkd", "encrypting"),
    }
    assert all(r["last_2"] > 0 and r["last_3"] < 2 for r in assocs)
    # the QKD-only association took its keys from the KME stock: ~10 per second
    assert encryptors.stock.stored < 200 - 10


class FallbackScript:
    """Cuts an association's key manager once two polls saw it encrypting, and restores it once
    two polls saw the classical fallback: paced by what the daemon polled, not by wall-clock
    timers that a loaded machine's slow start outruns (an observer of the collector)."""

    def __init__(self, association: Association) -> None:
        self.association = association
        self.states: list[str] = []
        self.cut = False

    def __call__(self, samples: list) -> None:
        self.states += [
            s.fields["state"]
            for s in samples
            if s.measurement == "encryptor_association" and s.tags["port"] == "eth-1/1"
        ]
        if not self.cut and self.states.count("encrypting") >= 2:
            self.cut, self.association.qkd_available = True, False
        elif self.cut and self.states.count("classical_fallback") >= 2:
            self.association.qkd_available = True


def test_classical_fallback_is_a_state_and_an_event(tmp_path, encryptors):
    (l2_qkd, _) = encryptors.l2.model.associations
    listen = ":".join(map(str, encryptors.trap_target))
    script = FallbackScript(l2_qkd)
    recorder = run(
        tmp_path, encryptors.devices()[:1], 4.0, observers=[script], traps={"listen": listen}
    )

    assocs = [
        s
        for s in recorder.samples
        if s.measurement == "encryptor_association" and s.tags["port"] == "eth-1/1"
    ]
    states = [s.fields["state"] for s in assocs]
    assert states[0] == "encrypting" and "classical_fallback" in states
    assert states[-1] == "encrypting"
    fallen = [s for s in assocs if s.fields["classical_fallback"]]
    assert all(s.fields["key_source"] == "classical" for s in fallen)
    assert assocs[-1].fields["key_fetch_failures_total"] > 0
    assert assocs[-1].fields["fallbacks_total"] == 1
    events = [s for s in recorder.samples if s.measurement == "encryptor_event"]
    polled = [e for e in events if "notification" not in e.fields]
    assert [(e.tags["event"], e.tags["severity"], e.tags["port"]) for e in polled] == [
        ("classical_fallback", "major", "eth-1/1"),
        ("qkd_restored", "info", "eth-1/1"),
    ]
    # the same two changes as traps, received by the daemon's trap listener when they happen
    trapped = [e for e in events if "notification" in e.fields]
    assert [(e.tags["event"], e.fields["notification"]) for e in trapped] == [
        ("classical_fallback", "qencClassicalFallback"),
        ("qkd_restored", "qencQkdKeyRestored"),
    ]
    assert all(e.tags["device"] == "enc-quevedo" and e.tags["peer"] == "Norte" for e in trapped)
    assert trapped[0].fields["key_source"] == "classical"
    assert trapped[0].fields["state"] == "classical_fallback"
    assert trapped[0].time_ns < polled[0].time_ns + 1_000_000_000  # about when polled
    module = [s for s in recorder.samples if s.measurement == "encryptor"]
    assert max(s.fields["associations_in_fallback"] for s in module) == 1
    assert module[-1].fields["associations_in_fallback"] == 0
    assert violations(recorder.samples, load_contract()) == []


def test_a_link_outage_drains_the_kme_stock_and_the_encryptor_falls_back(tmp_path, encryptors):
    stock = encryptors.stock
    stock.link_up = False
    stock.stored = 5.0  # half a second of refreshes left
    recorder = run(tmp_path, encryptors.devices()[:1], 1.5)
    assert stock.count_at(0) == 0
    events = [s for s in recorder.samples if s.measurement == "encryptor_event"]
    assert [e.tags["event"] for e in events] == ["classical_fallback"]


def test_snmpv3_and_faults_are_that_devices_errors(encryptors):
    l2, l1 = encryptors.devices()
    creds = encryptors.l2.credentials
    v3 = {
        "version": "3",
        "user": creds.user,
        "auth_protocol": "sha256",
        "auth_key": creds.auth_key,
        "priv_protocol": "aes",
        "priv_key": creds.priv_key,
    }
    polled = poll_once({**l2, "snmp": v3})
    assert polled.ok, polled.error
    assert {s.measurement for s in polled.samples} == {
        "encryptor",
        "encryptor_port",
        "encryptor_association",
    }
    wrong = poll_once({**l2, "snmp": {**v3, "auth_key": "not-the-agents-key"}})
    assert wrong.error_class in {"auth", "timeout"}
    assert "not-the-agents-key" not in wrong.error

    encryptors.l1.unresponsive = True
    silent = poll_once({**l1, "snmp": {"request_timeout": 0.2, "retries": 0}})
    assert silent.error_class == "timeout"
    assert poll_once(l2).ok  # the other encryptor answers on


def test_an_agent_without_the_association_table_is_no_such_object(tmp_path):
    clock = AcceleratedClock()
    port = Port(1, "eth-1/1")
    model = EncryptorModel("sitline_eth", [port], [Association(1, port, "N", "etsi004", "qkd")])
    faults = Faults(missing_objects=frozenset({"qencAssocState"}))
    agent = EncryptorAgent("enc-old", "Quevedo", model, clock, faults=faults)
    with BackgroundEncryptors([agent]):
        device = {
            "name": "enc-old",
            "driver": "encryptor_snmp",
            "address": f"127.0.0.1:{agent.port}",
            "profile": "sitline_eth",
        }
        result = poll_once(device)
    assert result.error_class == "no_such_object"
    assert result.error.endswith("qencAssocTable column qencAssocState is absent")

"""The twin's key chain (issue 13): a KME per node, the 3 L1 + 6 L2 encryptors and the QRNG,
started from the bundled MadQCI topology and driven by the one model, polled through the real
drivers (etsi014 over HTTPS with mutual TLS, encryptor_snmp over SNMP, qrng).

Simulated time is a `ManualClock`: a test moves it and checks the key stocks to the key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from qkdtel.poller import DevicePoller, PollResult
from qkdtel.sims.clock import ManualClock
from qkdtel.sims.influxd import free_port
from qkdtel.sims.topology import load_topology
from qkdtel.sims.twin.keys import KEY_SIZE_BITS, KeySims, start_key_sims
from qkdtel.sims.twin.model import TwinModel
from tests.collector_run import Recorder, collector_document
from tests.metrics_doc import load_contract
from tests.test_etsi014 import assert_status_only
from tests.test_health import wait_until
from tests.test_metrics_contract import violations

START_S = 3 * 86_400.0  # a few days into the simulation: every channel long since started


@dataclass
class Twin:
    clock: ManualClock
    model: TwinModel
    keys: KeySims


class Pollers:
    """The collector's own pollers of some devices, kept across polls (as the daemon keeps
    them, so the drivers see state changes between polls and report them as events)."""

    def __init__(self, devices: list[dict]):
        loaded = load_config_text(yaml.safe_dump({"devices": devices}))
        self.runner = asyncio.Runner()
        self.pollers = {
            d.config.name: DevicePoller.create(d, max_backoff=60.0) for d in loaded.devices
        }

    def poll(self, name: str) -> PollResult:
        result = self.runner.run(self.pollers[name].poll())
        assert result.ok, result.error
        return result

    def close(self) -> None:
        for poller in self.pollers.values():
            self.runner.run(poller.driver.aclose())
        self.runner.close()


@pytest.fixture
def twin(tmp_path) -> Iterator[Twin]:
    clock = ManualClock(START_S)
    model = TwinModel(load_topology(), seed=7, clock=clock)
    trap_target = ("127.0.0.1", free_port())  # nobody listens: the agents' `sent` records traps
    keys = start_key_sims(model, workdir=tmp_path, trap_target=trap_target)
    try:
        yield Twin(clock, model, keys)
    finally:
        keys.stop()


@pytest.fixture
def pollers(twin) -> Iterator[Pollers]:
    pollers = Pollers(twin.keys.devices(interval=1.0, timeout=3.0))
    yield pollers
    pollers.close()


def stock_point(result: PollResult, master: str, slave: str) -> dict:
    (point,) = [
        s.fields
        for s in result.samples
        if s.measurement == "kme_key_store"
        and (s.tags["master_sae_id"], s.tags["slave_sae_id"]) == (master, slave)
    ]
    return point


def events(result: PollResult, measurement: str) -> list[str]:
    return [s.tags["event"] for s in result.samples if s.measurement == measurement]


def association(result: PollResult) -> dict:
    (point,) = [s.fields for s in result.samples if s.measurement == "encryptor_association"]
    return point


def test_every_key_device_of_the_topology_runs_and_answers_its_driver(twin, pollers):
    entries = twin.keys.devices(interval=1.0, timeout=3.0)
    topology = twin.model.topology
    by_driver: dict[str, list[str]] = {}
    for entry in entries:
        by_driver.setdefault(entry["driver"], []).append(entry["name"])
    assert sorted(by_driver["etsi014"]) == sorted(k.name for k in topology.key_managers)
    assert by_driver["qrng"] == ["qrng-quevedo"]
    assert sorted(by_driver["encryptor_snmp"]) == sorted(e.name for e in topology.encryptors)
    profiles = [e["profile"] for e in entries if e["driver"] == "encryptor_snmp"]
    assert (profiles.count("adva_otn"), profiles.count("sitline_eth")) == (3, 6)
    kme_norte = next(e for e in entries if e["name"] == "kme-norte")
    assert kme_norte["tags"] == {"node": "Norte", "domain": "TID"}
    assert len(kme_norte["sae_pairs"]) == 5  # Quevedo, Quijote, Quintin, Concepcion, Distrito

    samples = []
    for entry in entries:
        samples += pollers.poll(entry["name"]).samples
    assert violations(samples, load_contract()) == []
    stocks = [s for s in samples if s.measurement == "kme_key_store"]
    assert len(stocks) == 2 * len(twin.keys.stocks)  # each shared stock, from both ends
    ends = {"kme-quevedo", "kme-norte"}
    quevedo_norte = [
        s for s in stocks if {s.tags["source_kme_id"], s.tags["target_kme_id"]} == ends
    ]
    assert len(quevedo_norte) == 2
    # the two ends report one stock: the same keys, each with its own SAE as master
    assert len({s.fields["stored_key_count"] for s in quevedo_norte}) == 1
    assert {s.tags["master_sae_id"] for s in quevedo_norte} == {"SAE-QUEVEDO", "SAE-NORTE"}
    states = {s.fields["state"] for s in samples if s.measurement == "encryptor_association"}
    assert states == {"encrypting"}
    assert_status_only(*twin.keys.kmes)

    # with --v3, the encryptors are polled over SNMPv3 authPriv
    v3 = [e for e in twin.keys.devices(v3=True) if e["driver"] == "encryptor_snmp"]
    assert {e["snmp"]["version"] for e in v3} == {"3"}
    results = [asyncio.run(_poll_fresh(v3, e["name"])) for e in v3]
    assert [(r.device, r.error) for r in results if not r.ok] == []


def test_stock_follows_generation_minus_consumption(twin, pollers):
    model, clock = twin.model, twin.clock
    pair = twin.keys.stocks[frozenset(("Quevedo", "Norte"))]
    background = pair.background_bps
    assert background == pytest.approx(0.3 * 37_300)  # 30 % of link 4's published 37.3 kbit/s

    def stored() -> int:
        # the encryptor first: its read runs the refreshes due, taking their keys
        pollers.poll("enc-l1-quevedo-norte")
        point = stock_point(pollers.poll("kme-quevedo"), "SAE-QUEVEDO", "SAE-NORTE")
        return point["stored_key_count"]

    def run(seconds: float, demand_bps: float) -> tuple[int, float]:
        """Stored keys after `seconds` more, and what generation minus demand predicts."""
        before = stored()
        clock.advance(seconds)
        generation = model.pair_generation_bps("Quevedo", "Norte")
        refreshes = seconds / 10.0  # enc-l1-quevedo-norte: one key every 10 s
        net_keys = (generation - demand_bps) / KEY_SIZE_BITS * seconds - refreshes
        return stored(), before + net_keys

    # healthy: generation above the background demand, the stock fills
    after, expected = run(300.0, background)
    assert after == pytest.approx(expected, abs=2)
    assert model.pair_generation_bps("Quevedo", "Norte") > background

    # a demand surge above generation: the stock drains at the difference
    model.set_consumption("Quevedo", "Norte", 100_000.0)
    after, expected = run(600.0, background + 100_000.0)
    assert after == pytest.approx(expected, abs=2)
    assert after < 0.4 * pair.stock.max_key_count  # it started half full and fell


def test_a_fibre_break_drains_the_stock_the_encryptor_falls_back_and_both_recover(twin, pollers):
    model, clock = twin.model, twin.clock
    encryptor = "enc-l1-quevedo-norte"
    first = association(pollers.poll(encryptor))
    assert (first["state"], first["key_source"]) == ("encrypting", "qkd")
    full = stock_point(pollers.poll("kme-norte"), "SAE-NORTE", "SAE-QUEVEDO")
    assert full["stored_key_count"] > 0 and not full["key_store_empty"]

    model.add_fibre_fault("4", 30.0, distance_km=12.0, kind="break")
    assert model.pair_generation_bps("Quevedo", "Norte") == 0.0
    clock.advance(4 * 3600.0)  # the background demand alone empties half the stock in ~100 min

    kme = pollers.poll("kme-norte")
    empty = stock_point(kme, "SAE-NORTE", "SAE-QUEVEDO")
    assert empty["stored_key_count"] == 0 and empty["key_store_empty"] is True
    assert events(kme, "kme_event") == ["key_store_empty"]
    polled = pollers.poll(encryptor)
    fallen = association(polled)
    assert (fallen["state"], fallen["key_source"]) == ("classical_fallback", "classical")
    assert fallen["fallbacks_total"] == 1 and fallen["key_fetch_failures_total"] > 0
    assert events(polled, "encryptor_event") == ["classical_fallback"]
    # only link 4 broke: the Quevedo-Quijano stock (link 8) kept filling
    other = stock_point(pollers.poll("kme-quevedo"), "SAE-QUEVEDO", "SAE-QUIJANO")
    assert other["stored_key_count"] > 0

    model.clear_fibre_faults("4")
    clock.advance(600.0)
    kme = pollers.poll("kme-norte")
    assert stock_point(kme, "SAE-NORTE", "SAE-QUEVEDO")["stored_key_count"] > 10_000
    assert events(kme, "kme_event") == ["key_store_refilled"]
    polled = pollers.poll(encryptor)
    back = association(polled)
    assert (back["state"], back["key_source"]) == ("encrypting", "qkd")
    assert events(polled, "encryptor_event") == ["qkd_restored"]
    agent = next(a for a in twin.keys.agents if a.name == encryptor)
    traps = ["qencClassicalFallback", "qencQkdKeyRestored"]  # sent by the agent's own loop
    wait_until(lambda: [n.name for n in agent.sent] == traps, 5.0, f"traps {traps}")


def test_a_key_manager_taken_down_stops_answering_and_its_encryptors_fall_back(twin, pollers):
    model, clock = twin.model, twin.clock
    model.set_device_up("kme-norte", False)
    result = asyncio.run(_poll_fresh(twin.keys.devices(), "kme-norte"))
    assert not result.ok and "cannot connect" in result.error
    clock.advance(20.0)  # two refreshes of enc-l1-norte-concepcion, which draws from kme-norte
    fallen = association(pollers.poll("enc-l1-norte-concepcion"))
    assert fallen["state"] == "classical_fallback"
    still = association(pollers.poll("enc-l1-quevedo-norte"))  # draws from kme-quevedo
    assert still["state"] == "encrypting"

    model.set_device_up("kme-norte", True)
    clock.advance(10.0)
    assert association(pollers.poll("enc-l1-norte-concepcion"))["state"] == "encrypting"
    assert pollers.poll("kme-norte").ok


def test_the_qrng_and_an_encryptor_taken_down_stop_answering_until_brought_back(twin, pollers):
    model = twin.model
    for name in ("qrng-quevedo", "enc-l2-quevedo-quijano"):
        model.set_device_up(name, False)
    devices = twin.keys.devices(interval=1.0, timeout=1.0)
    qrng = asyncio.run(_poll_fresh(devices, "qrng-quevedo"))
    assert not qrng.ok and "cannot connect" in qrng.error
    encryptor = asyncio.run(_poll_fresh(devices, "enc-l2-quevedo-quijano"))
    assert not encryptor.ok and encryptor.error_class == "timeout"
    assert pollers.poll("enc-l2-quevedo-quiroga").ok  # the others still answer

    for name in ("qrng-quevedo", "enc-l2-quevedo-quijano"):
        model.set_device_up(name, True)
    rate = [s for s in pollers.poll("qrng-quevedo").samples if s.measurement == "qrng"]
    assert rate and rate[0].fields["delivered_rate_bps"] > 0
    assert association(pollers.poll("enc-l2-quevedo-quijano"))["state"] == "encrypting"


async def _poll_fresh(devices: list[dict], name: str) -> PollResult:
    """One poll of `name` by a poller of its own (its failure is the result, not a raise)."""
    loaded = load_config_text(yaml.safe_dump({"devices": devices}))
    device = next(d for d in loaded.devices if d.config.name == name)
    poller = DevicePoller.create(device, max_backoff=60.0)
    try:
        return await poller.poll()
    finally:
        await poller.driver.aclose()


def test_encryptor_traps_reach_the_daemon_as_snmpv3_when_asked(tmp_path):
    clock = ManualClock(START_S)
    model = TwinModel(load_topology(), seed=7, clock=clock)
    trap_target = ("127.0.0.1", free_port())
    keys = start_key_sims(
        model, workdir=tmp_path / "twin", trap_target=trap_target, trap_version="3"
    )
    try:
        name = "enc-l1-quevedo-norte"
        (device,) = [d for d in keys.devices(interval=0.5, timeout=2.0) if d["name"] == name]
        creds = next(a for a in keys.agents if a.name == name).credentials
        user = {
            "user": creds.user,
            "auth_protocol": "sha256",
            "auth_key": creds.auth_key,
            "priv_protocol": "aes",
            "priv_key": creds.priv_key,
        }
        # the agents' v3 user, and a community that is not theirs: a v2c trap is refused
        listen = f"{trap_target[0]}:{trap_target[1]}"
        traps = {"listen": listen, "users": [user], "communities": ["not-the-agents"]}
        document = {**collector_document(tmp_path, [device]), "traps": traps}
        model.add_fibre_fault("4", 30.0, kind="break")
        recorder = Recorder()

        def observe(samples: list) -> None:
            """At the first poll (the daemon listens): 4 h of simulated time, the stock runs
            dry and the encryptor's loop sends its trap."""
            recorder(samples)
            if clock.now() == START_S:
                clock.advance(4 * 3600.0)

        loaded = load_config_text(yaml.safe_dump(document))
        asyncio.run(Collector(loaded, observers=[observe]).run(duration=2.0))
    finally:
        keys.stop()
    trapped = [
        (e.tags["device"], e.tags["event"], e.fields["notification"])
        for e in recorder.samples
        if e.measurement == "encryptor_event" and "notification" in e.fields
    ]
    assert trapped == [("enc-l1-quevedo-norte", "classical_fallback", "qencClassicalFallback")]

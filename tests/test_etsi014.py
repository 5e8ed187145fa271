"""Key managers over ETSI GS QKD 014 (issue 10): simulated KMEs over HTTPS with mutual TLS on
loopback, polled by the `etsi014` driver through the daemon into a real InfluxDB.

What must hold: key stock per SAE pair arrives with the derived drain rate and time to empty;
a stock running dry is visible in samples and as an event; a KME that is down, answers 503,
malformed JSON, an oversized body or key material is that device's error while the others poll
on; TLS refuses a wrong CA and a client certificate the KME does not trust; and the collector
never asks for keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import statistics
from collections.abc import Sequence

import httpx
import pytest
import yaml

from qkdtel.config import ConfigError, load_config_text
from qkdtel.daemon import Collector
from qkdtel.poller import DevicePoller
from qkdtel.sims.https_server import Fault
from qkdtel.sims.kme.kme import SimulatedKme
from tests.collector_run import Recorder, collector_document
from tests.fixtures_https import PKI_KEY_PASSWORD, tls_options
from tests.metrics_doc import load_contract
from tests.test_metrics_contract import violations

STATUS_PATH = re.compile(r"^/api/v1/keys/[A-Za-z0-9._~-]+/status$")


def run_daemon(document: dict, seconds: float, observers: Sequence = ()) -> Recorder:
    recorder = Recorder()
    loaded = load_config_text(yaml.safe_dump(document))
    asyncio.run(Collector(loaded, observers=[recorder, *observers]).run(duration=seconds))
    return recorder


def poll_once(device: dict):
    """One poll of one configured device through the collector's own poller."""
    loaded = load_config_text(yaml.safe_dump({"devices": [device]}))

    async def main():
        poller = DevicePoller.create(loaded.devices[0], max_backoff=60.0)
        try:
            return await poller.poll()
        finally:
            await poller.driver.aclose()

    return asyncio.run(main())


def assert_status_only(*kmes: SimulatedKme) -> None:
    """Every request any KME saw was a status request: no enc_keys, no dec_keys."""
    for kme in kmes:
        paths = kme.requests()
        assert paths, f"{kme.kme_id} was never polled"
        assert all(STATUS_PATH.match(p) for p in paths), paths
        assert not [p for p in paths if "enc_keys" in p or "dec_keys" in p]


def test_key_stock_flows_into_influxdb_and_a_503_kme_fails_alone(
    tmp_path, influxdb, influx_db, kme_sim
):
    quevedo = kme_sim(
        "KME-Quevedo", pairs=(("enc-quevedo", "enc-norte"), ("otn-quevedo", "otn-norte"))
    )
    norte = kme_sim("KME-Norte", pairs=(("enc-norte", "enc-quevedo"),))
    norte.sim.set_fault(Fault.UNAVAILABLE)
    document = collector_document(
        tmp_path, [quevedo.device("kme-quevedo"), norte.device("kme-norte")]
    )
    document["sinks"] = [{"type": "influxdb_v1", "url": influxdb.url, "database": influx_db}]
    recorder = run_daemon(document, 2.5)

    stock = influxdb.query(
        "SELECT last(stored_key_count), last(max_key_count), last(key_size_bits), "
        'last(net_drain_keys_per_s) FROM kme_key_store GROUP BY "slave_sae_id", "device"',
        influx_db,
    )
    assert {(r["device"], r["slave_sae_id"]) for r in stock} == {
        ("kme-quevedo", "enc-norte"),
        ("kme-quevedo", "otn-norte"),
    }
    for row in stock:
        assert 0 < row["last"] <= row["last_1"] == 1000 and row["last_2"] == 256
        assert isinstance(row["last_3"], float)  # derived from two polls
    (tags,) = influxdb.query(
        'SHOW TAG VALUES FROM kme_key_store WITH KEY = "source_kme_id"', influx_db
    )
    assert tags["value"] == "KME-Quevedo"

    statuses = recorder.statuses()
    assert statuses["kme-quevedo"] and all(s.fields["up"] for s in statuses["kme-quevedo"])
    failed = statuses["kme-norte"]
    assert failed and not any(s.fields["up"] for s in failed)
    assert {s.fields["error_class"] for s in failed} == {"instrument_error"}
    assert "HTTP 503" in failed[0].fields["error"]
    assert_status_only(quevedo.sim, norte.sim)


def test_a_link_outage_drains_the_stock_until_it_runs_dry(tmp_path, kme_sim):
    # 300 keys, 4 encryptors taking a key every simulated second, time 50x: dry in ~1.5 s
    kme = kme_sim(speed=50, link_up=False, stored=300.0, encryptors=4)
    (stock,) = kme.stocks.values()
    empty_polls = 0

    def restore_once_seen_dry(samples: list) -> None:
        """The link comes back once two polls saw the stock empty: paced by what the daemon
        polled, not by a timer that a loaded machine's slow start outruns."""
        nonlocal empty_polls
        empty_polls += sum(
            s.measurement == "kme_key_store" and s.fields["stored_key_count"] == 0 for s in samples
        )
        if empty_polls >= 2:
            stock.link_up = True

    document = collector_document(tmp_path, [kme.device("kme")])
    recorder = run_daemon(document, 4.5, observers=[restore_once_seen_dry])

    points = [s for s in recorder.samples if s.measurement == "kme_key_store"]
    counts = [p.fields["stored_key_count"] for p in points]
    draining = [p for p in points if p.fields.get("net_drain_keys_per_s", 0) > 0]
    assert counts[0] > 0 and 0 in counts and counts[-1] > 0, counts
    # 4 keys per simulated second x 50: about 200 keys per real second. The median: a poll
    # started late then one on time measure over a short gap, in whole keys (+-30 %).
    rates = [p.fields["net_drain_keys_per_s"] for p in draining if p.fields["stored_key_count"]]
    assert 150 < statistics.median(rates) < 250, rates
    assert all(p.fields["time_to_empty_s"] < 3 for p in draining[:3])
    assert any(p.fields["key_store_empty"] for p in points)
    events = [s for s in recorder.samples if s.measurement == "kme_event"]
    assert [(e.tags["event"], e.tags["severity"]) for e in events] == [
        ("key_store_empty", "major"),
        ("key_store_refilled", "info"),
    ]
    assert events[0].tags["slave_sae_id"] == "enc-norte" and events[0].tags["device"] == "kme"
    assert violations(recorder.samples, load_contract()) == []
    assert_status_only(kme.sim)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.MALFORMED, "answer is not JSON (Expecting value at line 1 column 43)"),
        (Fault.OVERSIZED, "answer longer than max_body_bytes 65536; not read further"),
    ],
)
def test_malformed_or_oversized_answers_are_clear_errors_and_the_daemon_goes_on(
    tmp_path, kme_sim, fault, message
):
    broken = kme_sim("KME-Norte")
    broken.sim.set_fault(fault)
    healthy = kme_sim("KME-Quevedo")
    devices = [broken.device("kme-broken"), healthy.device("kme-healthy")]
    recorder = run_daemon(collector_document(tmp_path, devices), 1.5)

    statuses = recorder.statuses()
    failed = statuses["kme-broken"]
    assert len(failed) >= 3  # polled again and again: nothing crashed
    assert {s.fields["error_class"] for s in failed} == {"malformed"}
    assert failed[0].fields["error"] == f"{broken.sim.url}/api/v1/keys/enc-norte/status: {message}"
    assert all(s.fields["up"] for s in statuses["kme-healthy"])


def test_key_material_instead_of_a_status_is_refused_and_never_logged(kme_sim, caplog):
    kme = kme_sim()
    kme.sim.serve_keys_instead = True
    caplog.set_level(logging.DEBUG)
    result = poll_once(kme.device("kme"))

    assert result.error_class == "malformed" and not result.samples
    assert "answered key material (a keys array)" in result.error
    assert "refused, nothing of it kept or logged" in result.error
    assert "key_ID" not in caplog.text and '"key"' not in caplog.text
    assert "key_ID" not in result.error
    assert_status_only(kme.sim)


def test_a_kme_that_is_down_is_refused_then_polled_again_once_back(kme_sim):
    kme = kme_sim()
    kme.sim.server.down()
    down = poll_once(kme.device("kme"))
    assert down.error_class == "refused" and "cannot connect" in down.error
    kme.sim.server.up()
    assert poll_once(kme.device("kme")).ok


def test_a_server_signed_by_another_ca_is_refused(kme_sim, pki):
    kme = kme_sim()
    result = poll_once(kme.device("kme", tls=tls_options(pki, ca_file=str(pki.other_ca))))
    assert result.error_class == "auth"
    assert "TLS handshake failed: self-signed certificate in certificate chain" in result.error
    assert kme.sim.requests() == []


def test_a_client_certificate_the_kme_does_not_trust_is_refused(kme_sim, pki):
    kme = kme_sim()
    other = {"cert_file": str(pki.other_client.cert), "key_file": str(pki.other_client.key)}
    result = poll_once(kme.device("kme", tls=tls_options(pki, key_password=None, **other)))
    # TLS 1.3: the KME's refusal reaches us as its alert or as the connection closing
    assert result.error_class in {"auth", "connection_lost"}, result.error
    assert kme.sim.requests() == [] and kme.sim.server.handshake_failures >= 1


def test_a_missing_client_certificate_is_a_configuration_error_or_an_auth_error(
    kme_sim, pki, tmp_path
):
    kme = kme_sim()
    tls = tls_options(pki)
    del tls["cert_file"]
    with pytest.raises(ConfigError, match=r"devices\[0\]\.tls\.cert_file.*[Ff]ield required"):
        load_config_text(yaml.safe_dump({"devices": [kme.device("kme", tls=tls)]}))
    gone = tls_options(pki, cert_file=str(tmp_path / "absent.pem"))
    result = poll_once(kme.device("kme", tls=gone))
    assert result.error_class == "auth" and "absent.pem" in result.error


def test_the_key_passphrase_never_shows(kme_sim, pki, caplog):
    kme = kme_sim()
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-passphrase-Zx81"
    result = poll_once(kme.device("kme", tls=tls_options(pki, key_password=wrong)))
    assert result.error_class == "auth" and "wrong key_password" in result.error
    assert wrong not in result.error and wrong not in caplog.text
    assert PKI_KEY_PASSWORD not in caplog.text


@pytest.mark.parametrize("slave", ["enc-norte/enc_keys", "x?number=9", "a b", ""])
def test_an_sae_id_cannot_reach_another_endpoint(kme_sim, slave):
    kme = kme_sim()
    device = kme.device("kme", sae_pairs=[{"master_sae_id": "a", "slave_sae_id": slave}])
    with pytest.raises(ConfigError, match=r"sae_pairs\[0\]\.slave_sae_id"):
        load_config_text(yaml.safe_dump({"devices": [device]}))


def test_a_client_without_a_certificate_gets_no_status(kme_sim, pki):
    """The protocol-level half of "missing client certificate": a client presenting none (the
    driver cannot be configured so, see above) is refused by the KME before any request."""
    kme = kme_sim()
    context = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises((httpx.TransportError, ssl.SSLError)), httpx.Client(verify=context) as c:
        c.get(f"{kme.sim.url}/api/v1/keys/enc-norte/status").raise_for_status()
    assert kme.sim.requests() == [] and kme.sim.server.handshake_failures >= 1

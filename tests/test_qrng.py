"""The QRNG (issue 10): a simulated unit over HTTPS with mutual TLS (modelled status endpoint),
polled by the `qrng` driver through the daemon into a real InfluxDB, next to a KME."""

from __future__ import annotations

import asyncio

import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from qkdtel.poller import DevicePoller
from qkdtel.sims.https_server import Fault
from qkdtel.sims.qrng import MAX_RATE_BPS
from tests.collector_run import Recorder, collector_document
from tests.fixtures_https import tls_options
from tests.metrics_doc import load_contract
from tests.test_etsi014 import poll_once
from tests.test_metrics_contract import violations


def test_qrng_and_kme_samples_flow_into_influxdb(tmp_path, influxdb, influx_db, qrng_sim, kme_sim):
    qrng = qrng_sim()
    kme = kme_sim()
    document = collector_document(tmp_path, [qrng.device("qrng-quevedo"), kme.device("kme")])
    document["sinks"] = [{"type": "influxdb_v1", "url": influxdb.url, "database": influx_db}]
    recorder = Recorder()
    loaded = load_config_text(yaml.safe_dump(document))
    asyncio.run(Collector(loaded, observers=[recorder]).run(duration=2.0))

    (row,) = influxdb.query(
        "SELECT last(delivered_rate_bps), last(max_rate_bps), last(healthy), "
        "last(delivered_bits_rate_bps), last(utilisation_ratio) FROM qrng "
        "WHERE device = 'qrng-quevedo' GROUP BY \"serial\"",
        influx_db,
    )
    assert row["serial"] == "QRNG-Quevedo-01" and row["last_1"] == MAX_RATE_BPS
    assert 0.05 * MAX_RATE_BPS <= row["last"] <= MAX_RATE_BPS and row["last_2"] is True
    # the counter-derived rate agrees with the reported one (demand drifts over minutes)
    assert abs(row["last_3"] - row["last"]) < 0.2 * row["last"]
    assert abs(row["last_4"] - row["last"] / MAX_RATE_BPS) < 1e-9
    assert influxdb.count(influx_db, "kme_key_store", "stored_key_count") >= 3
    points = [s for s in recorder.samples if s.measurement in ("qrng", "kme_key_store")]
    assert points and violations(recorder.samples, load_contract()) == []


def test_a_degraded_or_failed_qrng_is_visible(qrng_sim):
    qrng = qrng_sim()
    qrng.sim.health = "degraded"
    degraded = poll_once(qrng.device("qrng"))
    (sample,) = degraded.samples
    assert sample.fields["health"] == "degraded" and sample.fields["healthy"] is False
    assert sample.fields["adaptive_proportion_failures"] >= 1
    qrng.sim.health = "failed"
    (failed,) = poll_once(qrng.device("qrng")).samples
    assert failed.fields["health"] == "failed" and failed.fields["delivered_rate_bps"] == 0.0


def test_qrng_faults_are_that_devices_errors(qrng_sim, pki):
    qrng = qrng_sim()
    wrong_ca = poll_once(qrng.device("qrng", tls=tls_options(pki, ca_file=str(pki.other_ca))))
    assert wrong_ca.error_class == "auth" and "TLS handshake failed" in wrong_ca.error
    qrng.sim.set_fault(Fault.UNAVAILABLE)
    unavailable = poll_once(qrng.device("qrng"))
    assert unavailable.error_class == "instrument_error" and "HTTP 503" in unavailable.error
    qrng.sim.set_fault(Fault.MALFORMED)
    assert poll_once(qrng.device("qrng")).error_class == "malformed"
    qrng.sim.set_fault(Fault.NONE)
    assert poll_once(qrng.device("qrng")).ok
    assert set(qrng.sim.server.requests()) == {"/api/v1/status"}


def test_a_qrng_taken_down_stops_answering_a_kept_alive_client(qrng_sim):
    """`down()` ends the connections a client keeps alive between polls, not only the port:
    one driver polling on schedule must see the device go and come back."""
    qrng = qrng_sim()
    loaded = load_config_text(yaml.safe_dump({"devices": [qrng.device("qrng")]}))

    async def main() -> list[str]:
        poller = DevicePoller.create(loaded.devices[0], max_backoff=60.0)
        try:
            classes = [(await poller.poll()).error_class]
            qrng.sim.server.down()
            classes.append((await poller.poll()).error_class)
            qrng.sim.server.up()
            classes.append((await poller.poll()).error_class)
            return classes
        finally:
            await poller.driver.aclose()

    first, down, back = asyncio.run(main())
    assert first == "" and back == ""
    assert down in {"refused", "connection_lost", "timeout"}, down

"""The OTDR driver against the simulated OTDR over real SCPI/TCP: acquisition with progress,
the event table, baselines and alarms, instrument errors, stalls and truncated blocks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from qkdtel.drivers.otdr import OtdrDriver
from qkdtel.drivers.otdr.driver import Progress
from qkdtel.drivers.scpi import ScpiError
from qkdtel.sdk import DeviceTimeout, Malformed, Sample


def driver(bench, timeout: float = 5.0, **options) -> OtdrDriver:
    return OtdrDriver("otdr-test", bench.options(**options), timeout)


def by(samples: list[Sample], measurement: str) -> list[Sample]:
    return [s for s in samples if s.measurement == measurement]


def commands(bench) -> list[str]:
    return [r.text.upper() for r in bench.sim.received()]


def test_acquisition_end_to_end_with_progress(otdr_sim):
    bench = otdr_sim("8", speed=60)  # 30 s of averaging in 0.5 s
    otdr = driver(bench)
    progress: list[Progress] = []
    otdr.on_progress = progress.append
    try:
        samples = otdr.poll_blocking()
    finally:
        asyncio.run(otdr.aclose())

    percents = [p.percent for p in progress]
    assert len(percents) >= 5, percents  # status polled while acquiring, not slept through
    assert percents == sorted(percents) and 0 <= percents[0] < 50 and percents[-1] == 100
    sent = commands(bench)
    assert sent.index(":INITIATE:IMMEDIATE") < sent.index(":TRACE:DATA?")
    assert "*OPC?" in sent and ":FORMAT:DATA REAL,32" in sent

    (trace,) = by(samples, "otdr_trace")
    assert trace.tags == {"link": "8", "wavelength": "1550"}
    assert trace.fields["fibre_length_m"] == pytest.approx(
        33_100, abs=trace.fields["sample_spacing_m"]
    )
    assert trace.fields["total_loss_db"] == pytest.approx(11.8, abs=0.05)
    assert (trace.fields["points"], trace.fields["sample_spacing_m"]) == (33_101, 2.0)
    assert trace.fields["attenuation_db_km"] == pytest.approx(0.20, abs=0.005)
    assert trace.fields["acquisition_s"] >= 0.5
    events = by(samples, "otdr_event")
    assert trace.fields["events"] == len(events) - 1 == 11  # and the far end
    connectors = [e for e in events if e.tags["type"] == "reflective"]
    truth = [e for e in bench.route.events if e.reflectance_db is not None]
    assert len(connectors) == len(truth) == trace.fields["reflective_events"] == 3
    for sample, event in zip(connectors, truth, strict=True):
        assert sample.fields["distance_m"] == pytest.approx(event.distance_m, abs=2)
        assert sample.fields["reflectance_db"] == pytest.approx(event.reflectance_db, abs=1)
    assert events[-1].tags["type"] == "end" and events[-1].tags["event"] == "12"


def test_binary_and_ascii_transfers_read_the_same_trace(otdr_sim):
    bench = otdr_sim("9", speed=300)
    results = []
    for data_format in ("binary", "ascii"):
        otdr = driver(bench, data_format=data_format, range_m=4000, pulse_width_ns=100)
        try:
            results.append(by(otdr.poll_blocking(), "otdr_trace")[0].fields)
        finally:
            asyncio.run(otdr.aclose())
    binary, ascii_ = results
    assert binary["fibre_length_m"] == ascii_["fibre_length_m"] == pytest.approx(1900, abs=0.25)
    assert binary["points"] == ascii_["points"] == 16_001
    assert ":FORMAT:DATA ASCII" in commands(bench)


def test_both_wavelengths_in_one_poll(otdr_sim):
    bench = otdr_sim("3", speed=300)
    otdr = driver(bench, wavelengths_nm=[1310, 1550], pulse_width_ns=300)
    try:
        traces = by(otdr.poll_blocking(), "otdr_trace")
    finally:
        asyncio.run(otdr.aclose())
    loss = {t.tags["wavelength"]: t.fields["total_loss_db"] for t in traces}
    assert loss == {
        "1310": pytest.approx(bench.route.loss_db(1310), abs=0.05),
        "1550": pytest.approx(4.3, abs=0.05),
    }


def test_baseline_then_added_loss_gives_an_alarm_at_its_distance(otdr_sim, tmp_path):
    bench = otdr_sim("8", speed=300)
    otdr = driver(bench, baseline_dir=str(tmp_path))
    try:
        first = otdr.poll_blocking()
        assert by(first, "otdr_trace")[0].fields["baseline_saved"] is True
        assert (tmp_path / "8_1550nm.json").exists()
        assert by(first, "otdr_alarm") == []

        quiet = otdr.poll_blocking()  # a new acquisition, new noise: no alarm
        assert by(quiet, "otdr_trace")[0].fields["alarms"] == 0

        bench.thread.call(lambda: bench.sim.add_loss(17_500, 1.2))  # a bend at 17.5 km
        samples = otdr.poll_blocking()
    finally:
        asyncio.run(otdr.aclose())
    trace = by(samples, "otdr_trace")[0]
    assert trace.fields["baseline_saved"] is False and trace.fields["alarms"] == 2
    alarms = {a.tags["alarm"]: a for a in by(samples, "otdr_alarm")}
    new = alarms["new_event"]
    assert new.fields["distance_m"] == pytest.approx(17_500, abs=30)
    assert new.fields["loss_db"] == pytest.approx(1.2, abs=0.03)
    assert new.fields["message"].startswith("new non-reflective event at 17")
    event = next(e for e in by(samples, "otdr_event") if e.tags["event"] == new.tags["event"])
    assert event.fields["distance_m"] == new.fields["distance_m"]
    total = alarms["total_loss_change"]
    assert total.fields["baseline_loss_db"] == pytest.approx(11.8, abs=0.05)
    assert total.fields["loss_change_db"] == pytest.approx(1.2, abs=0.03)


def test_new_reflective_event_gives_an_alarm(otdr_sim, tmp_path):
    bench = otdr_sim("4", speed=300)
    otdr = driver(bench, baseline_dir=str(tmp_path))
    try:
        otdr.poll_blocking()
        bench.thread.call(lambda: bench.sim.add_reflection(6_200, -45.0, 0.1))
        samples = otdr.poll_blocking()
    finally:
        asyncio.run(otdr.aclose())
    (alarm,) = by(samples, "otdr_alarm")  # 0.1 dB: no total-loss alarm
    assert alarm.tags["alarm"] == "new_event"
    assert alarm.fields["distance_m"] == pytest.approx(6_200, abs=2)
    assert alarm.fields["reflectance_db"] == pytest.approx(-45, abs=1)
    assert "new reflective event at 6200 m" in alarm.fields["message"]


def test_instrument_error_is_reported_with_the_command(otdr_sim):
    bench = otdr_sim("8")
    bench.sim.faults.errors[":INITiate[:IMMediate]"] = (-240, "Hardware error;laser")
    otdr = driver(bench)
    try:
        with pytest.raises(
            ScpiError, match=r"':INITiate:IMMediate' failed: -240,\"Hardware error;laser\""
        ) as caught:
            otdr.poll_blocking()
        assert caught.value.kind == "instrument_error"
        bench.sim.faults.errors.clear()
        assert by(otdr.poll_blocking(), "otdr_trace")  # the next poll works
    finally:
        asyncio.run(otdr.aclose())


def test_a_stuck_acquisition_times_out_is_aborted_and_the_next_poll_works(otdr_sim):
    bench = otdr_sim("8", speed=300)
    bench.sim.hang_acquisition = True
    otdr = driver(bench, timeout=1.5)
    progress: list[Progress] = []
    otdr.on_progress = progress.append
    try:
        with pytest.raises(
            DeviceTimeout, match=r"acquisition at 1550 nm only 40 % done .* aborted"
        ):
            otdr.poll_blocking()
        assert ":ABORT" in commands(bench)  # the instrument was left idle
        assert not bench.thread.call(bench.sim.measuring)
        assert progress[-1].percent == 40

        bench.sim.hang_acquisition = False
        samples = otdr.poll_blocking()
    finally:
        asyncio.run(otdr.aclose())
    assert by(samples, "otdr_trace")[0].fields["fibre_length_m"] == pytest.approx(33_100, abs=1)


def test_an_instrument_that_stops_answering_times_out_then_recovers(otdr_sim):
    bench = otdr_sim("9", speed=300)
    otdr = driver(bench, timeout=1.0, range_m=4000, pulse_width_ns=100)
    try:
        bench.sim.faults.stall = True
        with pytest.raises(DeviceTimeout, match="no answer"):
            otdr.poll_blocking()
        bench.sim.faults.stall = False
        assert by(otdr.poll_blocking(), "otdr_trace")
    finally:
        asyncio.run(otdr.aclose())
    assert ":ABORT" in commands(bench)  # recovery left it idle before the next job


@pytest.mark.parametrize("mode", ["cut", "short"])
def test_a_truncated_trace_block_is_malformed(otdr_sim, mode):
    bench = otdr_sim("9", speed=300)
    otdr = driver(bench, timeout=3.0, range_m=4000, pulse_width_ns=100)
    bench.sim.faults.truncate_blocks = mode
    try:
        with pytest.raises(
            Malformed, match=r"TRACe:DATA\?.*(truncated block|expected 16001 values)"
        ):
            otdr.poll_blocking()
        bench.sim.faults.truncate_blocks = None
        assert by(otdr.poll_blocking(), "otdr_trace")
    finally:
        asyncio.run(otdr.aclose())


def test_settings_the_instrument_refuses_name_the_setting(otdr_sim):
    bench = otdr_sim("9")
    otdr = driver(bench, pulse_width_ns=123)
    try:
        with pytest.raises(ScpiError, match=r"PULSe:WIDTh 123NS' failed: -222"):
            otdr.poll_blocking()
    finally:
        asyncio.run(otdr.aclose())


def test_trace_values_reach_the_driver_intact(otdr_sim):
    bench = otdr_sim("9", speed=300)
    otdr = driver(bench, range_m=4000, pulse_width_ns=100)
    try:
        with otdr.instrument.job(5) as job:
            trace = otdr._acquire(job, 1550)
    finally:
        asyncio.run(otdr.aclose())
    served = bench.thread.call(lambda: bench.sim._result)
    assert np.array_equal(trace.values_db, served.values_db.astype(np.float32))
    assert trace.events == served.events


def test_a_cut_fibre_gives_length_missing_event_and_loss_alarms(otdr_sim, tmp_path):
    bench = otdr_sim("8", speed=300)
    otdr = driver(bench, baseline_dir=str(tmp_path))
    try:
        otdr.poll_blocking()
        bench.thread.call(lambda: bench.sim.cut(20_000))
        samples = otdr.poll_blocking()
    finally:
        asyncio.run(otdr.aclose())
    alarms = by(samples, "otdr_alarm")
    kinds = [a.tags["alarm"] for a in alarms]
    past_the_cut = [e for e in bench.route.events if e.distance_m > 20_000]
    assert kinds.count("missing_event") == len(past_the_cut) == 4
    length = next(a for a in alarms if a.tags["alarm"] == "fibre_length_change")
    assert length.fields["distance_m"] == pytest.approx(20_000, abs=2)
    assert length.fields["length_change_m"] == pytest.approx(-13_100, abs=2)
    assert "total_loss_change" in kinds

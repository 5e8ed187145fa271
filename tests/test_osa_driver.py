"""The `osa` driver against the simulated analysers, both dialects, over real transports.

Configure + sweep + read on the Yokogawa AQ6370 class (binary and ASCII traces) and the Anritsu
MS9740A class (ASCII); the published channels of links 4 and 8 found exactly; the CV notch;
instrument errors, stalls and truncated blocks as the collector's error classes, with the
instrument recovered for the next poll; trace files; option validation.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from qkdtel.drivers.osa import OsaDriver, SpectrumTrace
from qkdtel.drivers.osa.options import OsaOptions
from qkdtel.drivers.scpi import ScpiError
from qkdtel.sdk import DeviceTimeout, Malformed, Sample

PUBLISHED = {"4": "21,22,23,30", "8": "25,29,34,59,60"}


@pytest.fixture
def drivers():
    """Make drivers; close them after the test."""
    made: list[OsaDriver] = []

    def make(options: OsaOptions, timeout: float = 10.0, name: str = "osa") -> OsaDriver:
        driver = OsaDriver(name, options, timeout)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.instrument.close()


def by(samples: list[Sample], measurement: str) -> dict[str, Sample]:
    return {s.tags.get("channel", ""): s for s in samples if s.measurement == measurement}


def sent(bench) -> list[str]:
    return [r.text for r in bench.sim.received()]


@pytest.mark.parametrize("dialect", ["yokogawa", "anritsu"])
@pytest.mark.parametrize("link", ["4", "8"])
def test_both_dialects_find_the_published_channels(osa_sim, drivers, dialect, link):
    bench = osa_sim(dialect, link)
    samples = drivers(bench.options()).poll_blocking()

    (sweep,) = by(samples, "osa_sweep").values()
    assert sweep.tags == {"dialect": dialect, "grid": "100", "link": link}
    assert sweep.fields["occupied_channels"] == PUBLISHED[link]
    assert sweep.fields["points"] == 2001
    assert sweep.fields["start_nm"] == pytest.approx(1528.0, abs=0.01)
    assert sweep.fields["stop_nm"] == pytest.approx(1567.0, abs=0.01)
    channels = by(samples, "osa_channel")
    assert len(channels) == 48  # channels 14..61 lie wholly inside 1528-1567 nm
    for carrier in bench.sim.spectrum.carriers:
        fields = channels[str(carrier.channel)].fields
        assert fields["occupied"] is True
        assert fields["power_dbm"] == pytest.approx(carrier.power_dbm, abs=0.2)
        assert fields["osnr_db"] == pytest.approx(bench.sim.spectrum.osnr_db(carrier), abs=0.5)
    lit = {c for c, s in channels.items() if s.fields["occupied"]}
    assert lit == set(PUBLISHED[link].split(","))
    assert sweep.fields["min_osnr_db"] == pytest.approx(
        min(bench.sim.spectrum.osnr_db(c) for c in bench.sim.spectrum.carriers), abs=0.5
    )

    notches = by(samples, "osa_quantum_channel")
    if link == "4":  # the CV channels 37/38 sit in a 25 dB notch
        assert set(notches) == {"37", "38"}
        for notch in notches.values():
            assert 23 < notch.fields["notch_depth_db"] < 25.1
            assert notch.fields["in_band_noise_dbm"] < -70
    else:  # link 8 carries no C-band quantum channel
        assert notches == {}

    # the instrument was set up as configured, in its own dialect
    sim = bench.sim
    assert sim.vacuum and (sim.start_nm, sim.stop_nm) == (1528.0, 1567.0)
    assert (sim.points, sim.rbw_nm) == (2001, 0.05)
    commands = sent(bench)
    if dialect == "yokogawa":
        assert sim.yokogawa_sense == 4  # HIGH2
        assert ":FORMat:DATA REAL,64" in commands and ":TRACe:Y? TRA" in commands
        assert ":STATus:OPERation:EVENt?" in commands  # sweep end from the status register
    else:
        assert sim.anritsu_vbw == "10HZ"
        assert "WDP VACUUM" in commands and "DMA?" in commands
        assert commands[commands.index("SSI") + 2] == "*OPC?"  # SSI, its error check, *OPC?


def test_ascii_transfer_gives_the_same_analysis(osa_sim, drivers):
    bench = osa_sim("yokogawa", "4")
    binary = drivers(bench.options(), name="bin").poll_blocking()
    ascii_ = drivers(bench.options(trace_transfer="ascii"), name="asc").poll_blocking()
    assert ":FORMat:DATA ASCii" in sent(bench)
    assert by(ascii_, "osa_sweep")[""].fields["occupied_channels"] == "21,22,23,30"
    for channel in ("21", "30"):
        a, b = by(binary, "osa_channel")[channel], by(ascii_, "osa_channel")[channel]
        assert a.fields["power_dbm"] == pytest.approx(b.fields["power_dbm"], abs=0.1)


def test_added_loss_shows_in_every_carrier(osa_sim, drivers):
    bench = osa_sim("anritsu", "8")
    driver = drivers(bench.options())
    before = by(driver.poll_blocking(), "osa_channel")
    bench.sim.faults.added_loss_db = 4.0
    after = by(driver.poll_blocking(), "osa_channel")
    for channel in PUBLISHED["8"].split(","):
        drop = before[channel].fields["power_dbm"] - after[channel].fields["power_dbm"]
        assert drop == pytest.approx(4.0, abs=0.2)


@pytest.mark.parametrize(
    ("dialect", "header", "command"),
    [
        ("yokogawa", "[:SENSe]:BANDwidth[:RESolution]", ":SENSe:BANDwidth:RESolution 0.050NM"),
        ("anritsu", "RES", "RES 0.05"),
    ],
)
def test_an_instrument_error_names_the_command_and_its_message(
    osa_sim, drivers, dialect, header, command
):
    bench = osa_sim(dialect, "4")
    driver = drivers(bench.options())
    bench.sim.faults.errors[header] = (-221, "Settings conflict")
    with pytest.raises(ScpiError) as caught:
        driver.poll_blocking()
    assert str(caught.value) == (
        f'{driver.instrument.where}: {command!r} failed: -221,"Settings conflict"'
    )
    assert caught.value.kind == "instrument_error"
    bench.sim.faults.errors.clear()
    assert by(driver.poll_blocking(), "osa_sweep")[""].fields["occupied_count"] == 4


@pytest.mark.parametrize("dialect", ["yokogawa", "anritsu"])
def test_a_stalled_osa_times_out_and_is_aborted_and_cleared(osa_sim, drivers, dialect):
    bench = osa_sim(dialect, "4")
    driver = drivers(bench.options(visa={"timeout": 0.3}, recovery_timeout=0.5), timeout=3)
    driver.poll_blocking()
    bench.sim.faults.stall = True
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"no answer to .* within 0.3 s"):
        driver.poll_blocking()
    assert time.monotonic() - started < 3  # within the device timeout, recovery attempt included
    assert driver.instrument.needs_recovery
    bench.sim.faults.stall = False
    bench.sim.clear_log()
    samples = driver.poll_blocking()
    abort = ":ABORt" if dialect == "yokogawa" else "SST"
    assert sent(bench)[:3] == [abort, "*CLS", "*OPC?"]  # recovered before anything else
    assert by(samples, "osa_sweep")[""].fields["occupied_channels"] == "21,22,23,30"


def test_a_sweep_longer_than_the_poll_is_abandoned_and_aborted(osa_sim, drivers):
    bench = osa_sim("yokogawa", "4", sweep_time_s=30)
    driver = drivers(bench.options(sweep_timeout=60), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"':INITiate' did not complete within 60 s"):
        driver.poll_blocking()
    took = time.monotonic() - started
    assert 0.8 < took < 2.5  # the poll's budget (timeout less a margin), not the sweep's 60 s
    assert not bench.sim.sweeping  # aborted: the instrument is not left sweeping
    assert not driver.instrument.needs_recovery
    assert ":ABORt" in sent(bench)


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("cut", r"truncated block: header declares 16008 bytes, the message ended after 8004"),
        ("short", r"expected 2001 values, got 1000"),
    ],
)
def test_a_truncated_trace_block_is_malformed(osa_sim, drivers, mode, why):
    bench = osa_sim("yokogawa", "4")
    driver = drivers(bench.options(visa={"timeout": 0.3}))
    bench.sim.faults.truncate_blocks = mode
    with pytest.raises(Malformed, match=r":TRACe:X\? TRA: " + why):
        driver.poll_blocking()
    bench.sim.faults.truncate_blocks = None
    assert by(driver.poll_blocking(), "osa_sweep")[""].fields["occupied_count"] == 4


@pytest.mark.parametrize(
    ("dialect", "transport"),
    [("yokogawa", "serial"), ("yokogawa", "vxi11"), ("anritsu", "vxi11")],
)
def test_the_osa_works_over_serial_and_vxi11(osa_sim, drivers, dialect, transport):
    bench = osa_sim(dialect, "8", pty=transport == "serial", vxi11=transport == "vxi11")
    if transport == "serial":
        visa = {"resource": bench.sim.serial_resource, "baud_rate": 115200}
    else:
        visa = {"resource": bench.sim.instr_resource}
    samples = drivers(bench.options(visa=visa)).poll_blocking()
    assert by(samples, "osa_sweep")[""].fields["occupied_channels"] == PUBLISHED["8"]


def test_a_stalled_vxi11_osa_gets_a_device_clear(osa_sim, drivers):
    bench = osa_sim("yokogawa", "4", vxi11=True)
    visa = {"resource": bench.sim.instr_resource, "timeout": 0.3}
    driver = drivers(bench.options(visa=visa, recovery_timeout=0.5), timeout=3)
    bench.sim.faults.stall = True
    with pytest.raises(DeviceTimeout, match=r"INSTR: no answer to ':SYSTem:ERRor\?' within"):
        driver.poll_blocking()
    assert bench.sim.device_clears == 1  # the recovery at once: cleared, then still stalled
    bench.sim.faults.stall = False
    bench.sim.clear_log()
    assert by(driver.poll_blocking(), "osa_sweep")[""].fields["occupied_count"] == 4
    assert bench.sim.device_clears == 2  # the recovery before the next poll
    assert sent(bench)[:3] == [":ABORt", "*CLS", "*OPC?"]


def test_traces_go_to_files_on_request(osa_sim, drivers, tmp_path):
    bench = osa_sim("anritsu", "4")
    folder = tmp_path / "traces"
    driver = drivers(bench.options(trace_dir=str(folder), trace_format="csv", trace_keep=2))
    written = [by(driver.poll_blocking(), "osa_sweep")[""].fields["trace_file"] for _ in range(3)]
    files = sorted(folder.iterdir())
    assert [str(f) for f in files] == written[1:]  # the oldest beyond trace_keep is gone
    trace = SpectrumTrace.load(files[-1])
    sweep = bench.sim.last_sweep
    np.testing.assert_allclose(trace.power_dbm, sweep.power_dbm, atol=0.006)
    np.testing.assert_allclose(trace.wavelength_nm, sweep.wavelength_nm, atol=1e-5)
    assert trace.meta["device"] == "osa" and trace.meta["link"] == "4"

    every_other = drivers(bench.options(trace_dir=str(tmp_path / "n"), trace_every=2), name="b")
    fields = [by(every_other.poll_blocking(), "osa_sweep")[""].fields for _ in range(3)]
    assert ["trace_file" in f for f in fields] == [True, False, True]
    assert len(list((tmp_path / "n").glob("b-*.npz"))) == 2


def test_options_are_checked_against_the_dialect(osa_sim):
    bench = osa_sim("anritsu", "4")
    for overrides, key, why in [
        ({"resolution_nm": 0.02}, "resolution_nm", "Anritsu MS9740A resolutions are 0.03, 0.05"),
        ({"points": 4001}, "points", "Anritsu MS9740A takes 51, 101, 251"),
        ({"sensitivity": "high3"}, "sensitivity", "sensitivities are normal, mid, high1, high2"),
        ({"trace_transfer": "binary"}, "trace_transfer", "sends traces as ASCII only"),
        ({"quantum_channels": [37.5]}, "quantum_channels", "37.5 is not a channel of the 100"),
        ({"center_nm": 1555, "span_nm": 10}, None, "channels 37, 38 are not (wholly) inside"),
        ({"start_nm": 1530}, None, "start_nm/stop_nm go together"),
        ({"start_nm": 1560, "stop_nm": 1530}, None, "must run upwards"),
        ({"start_nm": 1530, "stop_nm": 1560, "center_nm": 1545}, None, "not both"),
        ({"visa": {"baud_rate": 9600}}, "visa.baud_rate", "serial (ASRL) resources only"),
    ]:
        with pytest.raises(ValidationError) as caught:
            bench.options(**overrides)
        (error,) = caught.value.errors()
        where = ".".join(str(p) for p in error["loc"])
        assert where == (key or ""), (overrides, error)
        assert why in error["msg"], (overrides, error["msg"])
    anritsu = bench.options()
    assert anritsu.visa.read_termination == "\r\n"  # the dialect's default
    assert bench.options(visa={"read_termination": "\n"}).visa.read_termination == "\n"
    assert bench.options(center_nm=1547.3, span_nm=4).range_nm == (1545.3, 1549.3)

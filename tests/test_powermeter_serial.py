"""The power meter driver over a real serial path (pyvisa-py ASRL -> pyserial -> a pty):
readings, settings reaching the meter, instrument errors, a pulled line and its recovery."""

from __future__ import annotations

import asyncio

import pytest

from qkdtel.drivers.powermeter import PowerMeterDriver
from qkdtel.drivers.scpi import ScpiError
from qkdtel.sdk import Refused


def meter(bench, **options) -> PowerMeterDriver:
    return PowerMeterDriver("bench-pm", bench.options(**options), 3.0)


def test_reads_the_link_loss_over_the_serial_line(power_meter):
    pm = meter(
        power_meter,
        heads=[{"link": "8", "wavelength_nm": 1550, "averaging": "50ms"}],
    )
    try:
        (sample,) = pm.poll_blocking()
        assert sample.measurement == "optical_power"
        assert sample.tags == {"slot": "1", "channel": "1", "wavelength": "1550", "link": "8"}
        assert sample.fields["light"] is True
        assert sample.fields["power_dbm"] == pytest.approx(-11.8, abs=0.1)  # 0 dBm - 11.8 dB
        assert power_meter.sim.atime_s == pytest.approx(0.05)
        assert power_meter.sim.unit == "DBM"
        sent = [r.text for r in power_meter.sim.received()]
        assert ":SENSe1:CHANnel1:POWer:WAVelength 1550NM" in sent
        assert sent[-1] == ":READ1:CHANnel1:POWer?"

        power_meter.sim.loss_db = 14.3  # another fibre under test
        assert pm.poll_blocking()[0].fields["power_dbm"] == pytest.approx(-14.3, abs=0.1)
    finally:
        asyncio.run(pm.aclose())


def test_o_band_head_sees_the_o_band_loss(power_meter):
    pm = meter(power_meter, heads=[{"wavelength_nm": 1310}])
    try:
        (sample,) = pm.poll_blocking()
    finally:
        asyncio.run(pm.aclose())
    assert power_meter.sim.wavelength_nm == 1310
    assert sample.fields["power_dbm"] == pytest.approx(-11.8 * 1.5, abs=0.1)
    assert "link" not in sample.tags


def test_an_error_of_the_meter_names_the_command(power_meter):
    power_meter.sim.faults.errors[":SENSe1:CHANnel1:POWer:ATIMe"] = (-222, "Data out of range")
    pm = meter(power_meter)
    try:
        with pytest.raises(ScpiError, match=r"ATIMe 0\.1S' failed: -222,\"Data out of range\""):
            pm.poll_blocking()
    finally:
        asyncio.run(pm.aclose())


def test_a_pulled_line_is_a_clear_error_and_the_port_is_reopened(power_meter):
    pm = meter(power_meter)
    try:
        assert pm.poll_blocking()[0].fields["light"]
        power_meter.line.pull()
        with pytest.raises(Refused, match=r"ttyPM::INSTR: .*Input/output error"):
            pm.poll_blocking()
        with pytest.raises(Refused, match=r"ttyPM.*No such file or directory"):
            pm.poll_blocking()  # still unplugged: the port itself is gone now
        power_meter.line.replug()
        (sample,) = pm.poll_blocking()
        assert sample.fields["power_dbm"] == pytest.approx(-11.8, abs=0.1)
    finally:
        asyncio.run(pm.aclose())


def test_options_are_checked_where_they_are_written():
    from pydantic import ValidationError

    from qkdtel.drivers.powermeter.driver import PowerMeterOptions

    with pytest.raises(ValidationError, match="each slot/channel once"):
        PowerMeterOptions.model_validate(
            {"visa": {"resource": "ASRL/dev/ttyUSB0::INSTR"}, "heads": [{}, {}]}
        )
    with pytest.raises(ValidationError, match="baud_rate applies to serial"):
        PowerMeterOptions.model_validate(
            {"visa": {"resource": "TCPIP::10.0.0.1::5025::SOCKET", "baud_rate": 9600}}
        )

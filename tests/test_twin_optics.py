"""The twin's optical instruments (sims/twin/optics.py) polled by `qkdtel poll` on the devices
they generate: one fault on the model shows in the OTDR, the OSA and the power meter of its
link together, at its distance and by its loss; clearing it restores them; a device the model
takes down stops answering.

The instruments run in this process (real TCP listeners and a real pty), the poller in a child
process, as the daemon would poll them. The model's clock is a ManualClock standing still, so
the fibre's temperature swing is the same in every poll and differences are the fault's.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qkdtel.sims.clock import ManualClock
from qkdtel.sims.otdr.fibre import route_for_link
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.topology import load_topology
from qkdtel.sims.twin.model import TwinModel
from qkdtel.sims.twin.optics import OpticalSims, start_optical_sims

Sample = dict[str, Any]


class Twin:
    """A model, its optical instruments and a collector configuration polling them."""

    def __init__(self, workdir: Path):
        self.model = TwinModel(load_topology(), seed=0, clock=ManualClock())
        self.sims: OpticalSims = start_optical_sims(self.model, workdir=workdir / "optics")
        self.config = workdir / "qkdtel.yaml"
        document = {
            "collector": {"spool_dir": str(workdir / "spool")},
            "devices": self.sims.devices(),
        }
        self.config.write_text(yaml.safe_dump(document, sort_keys=False))

    def poll(self, *devices: str) -> list[Sample]:
        """`qkdtel poll -f json` of `devices` (all by default): one dict per point."""
        done = self.run_poll(*devices)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def run_poll(self, *devices: str) -> subprocess.CompletedProcess:
        argv = ["poll", "-c", str(self.config), "-f", "json", *devices]
        return subprocess.run(
            [sys.executable, "-m", "qkdtel.cli", *argv], capture_output=True, text=True, timeout=120
        )


@pytest.fixture
def twin(tmp_path) -> Iterator[Twin]:
    running = Twin(tmp_path)
    try:
        yield running
    finally:
        running.sims.stop()


def points(samples: list[Sample], measurement: str, device: str) -> list[Sample]:
    return [s for s in samples if s["measurement"] == measurement and s["tags"]["device"] == device]


def channel_powers(samples: list[Sample], device: str) -> dict[str, float]:
    """Peak power (dBm) of each occupied ITU channel the OSA `device` reported."""
    return {
        s["tags"]["channel"]: s["fields"]["peak_power_dbm"]
        for s in points(samples, "osa_channel", device)
        if s["fields"]["occupied"]
    }


def trace(samples: list[Sample], device: str) -> dict[str, Any]:
    (point,) = points(samples, "otdr_trace", device)
    return point["fields"]


def events_near(samples: list[Sample], device: str, metres: float, within: float = 50.0):
    return [
        e["fields"]
        for e in points(samples, "otdr_event", device)
        if abs(e["fields"]["distance_m"] - metres) <= within
    ]


def meter_dbm(samples: list[Sample], device: str) -> float:
    (point,) = points(samples, "optical_power", device)
    return point["fields"]["power_dbm"]


def test_one_fault_shows_in_otdr_osa_and_power_meter_and_clearing_restores_them(twin):
    # link 4 runs Quevedo -> Norte; its OTDR and OSA stand at Quevedo, the `a` end the model
    # counts distances from. The power meter reads link 8: its loss is the same throughout.
    before = twin.poll()
    twin.model.add_fibre_fault("4", 3.0, distance_km=12.0, kind="bend")
    during = twin.poll()
    twin.model.clear_fibre_faults("4")
    after = twin.poll()

    otdr = "otdr-quevedo-l4"
    assert events_near(before, otdr, 12_000) == []
    (bend,) = events_near(during, otdr, 12_000)
    assert bend["distance_m"] == pytest.approx(12_000, abs=30)
    assert bend["loss_db"] == pytest.approx(3.0, abs=0.1)
    assert trace(during, otdr)["total_loss_db"] - trace(before, otdr)["total_loss_db"] == (
        pytest.approx(3.0, abs=0.1)
    )
    alarms = {a["tags"]["alarm"]: a["fields"] for a in points(during, "otdr_alarm", otdr)}
    assert alarms["new_event"]["distance_m"] == pytest.approx(12_000, abs=30)
    assert alarms["total_loss_change"]["loss_change_db"] == pytest.approx(3.0, abs=0.1)
    assert events_near(after, otdr, 12_000) == []
    assert trace(after, otdr)["total_loss_db"] == pytest.approx(
        trace(before, otdr)["total_loss_db"], abs=0.05
    )
    assert points(after, "otdr_alarm", otdr) == []

    osa = "osa-quevedo-l4"
    clear, faulty, repaired = (channel_powers(s, osa) for s in (before, during, after))
    assert sorted(clear, key=int) == ["21", "22", "23", "30"]  # the published plan
    link_3 = sorted(channel_powers(before, "osa-quijote-l3"), key=int)
    assert link_3 == ["21", "22", "25", "26", "30"]  # link 3's invented plan
    assert faulty.keys() == clear.keys() == repaired.keys()
    for channel, dbm in clear.items():
        assert faulty[channel] == pytest.approx(dbm - 3.0, abs=0.2), channel
        assert repaired[channel] == pytest.approx(dbm, abs=0.2), channel

    # the other links' instruments saw nothing
    assert trace(during, "otdr-quevedo-l3")["total_loss_db"] == pytest.approx(
        trace(before, "otdr-quevedo-l3")["total_loss_db"], abs=0.05
    )
    for channel, dbm in channel_powers(before, "osa-quijote-l3").items():
        assert channel_powers(during, "osa-quijote-l3")[channel] == pytest.approx(dbm, abs=0.2)
    assert meter_dbm(during, "pm-quijano-l8") == pytest.approx(
        meter_dbm(before, "pm-quijano-l8"), abs=0.05
    )


def test_power_meter_and_an_otdr_at_the_far_end_follow_a_fault_on_link_8(twin):
    # Link 8 runs Quijano -> Quevedo: the meter stands at Quijano, the OTDR at Quevedo, so a
    # bend 10 km from Quijano is 33.1 - 10 = 23.1 km from the OTDR.
    devices = ("otdr-quevedo-l8", "pm-quijano-l8")
    before = twin.poll(*devices)
    assert meter_dbm(before, "pm-quijano-l8") == pytest.approx(-11.8, abs=0.1)  # 0 dBm source
    twin.model.add_fibre_fault("8", 2.5, distance_km=10.0, kind="splice")
    during = twin.poll(*devices)
    twin.model.clear_fibre_faults()
    after = twin.poll(*devices)

    drop = meter_dbm(before, "pm-quijano-l8") - meter_dbm(during, "pm-quijano-l8")
    assert drop == pytest.approx(2.5, abs=0.05)
    assert meter_dbm(after, "pm-quijano-l8") == pytest.approx(
        meter_dbm(before, "pm-quijano-l8"), abs=0.05
    )
    # the fibre's own events are those of link 8's layout, mirrored: it is tested from Quevedo
    layout = route_for_link(twin.model.topology.link("8"))
    measured = [e["fields"]["distance_m"] for e in points(before, "otdr_event", "otdr-quevedo-l8")]
    mirrored = sorted(33_100 - e.distance_m for e in layout.events)
    assert measured[:-1] == pytest.approx(mirrored, abs=30)  # and the far end
    (splice,) = events_near(during, "otdr-quevedo-l8", 23_100)
    assert splice["loss_db"] == pytest.approx(2.5, abs=0.1)
    assert events_near(before, "otdr-quevedo-l8", 23_100) == []
    assert events_near(after, "otdr-quevedo-l8", 23_100) == []


def test_a_break_ends_the_fibre_where_it_is_and_darkens_the_meter(twin):
    devices = ("otdr-quevedo-l8", "pm-quijano-l8")
    before = twin.poll(*devices)
    twin.model.add_fibre_fault("8", 40.0, distance_km=20.0, kind="break")
    twin.model.add_fibre_fault("8", 1.0, distance_km=5.0, kind="bend")  # beyond the break
    during = twin.poll(*devices)

    assert trace(before, "otdr-quevedo-l8")["fibre_length_m"] == pytest.approx(33_100, abs=10)
    cut = trace(during, "otdr-quevedo-l8")
    assert cut["fibre_length_m"] == pytest.approx(13_100, abs=10)  # 33.1 - 20 km
    assert events_near(during, "otdr-quevedo-l8", 28_100) == []  # the bend is out of sight
    alarms = {a["tags"]["alarm"] for a in points(during, "otdr_alarm", "otdr-quevedo-l8")}
    assert "fibre_length_change" in alarms
    assert meter_dbm(during, "pm-quijano-l8") == pytest.approx(-11.8 - 41.0, abs=0.1)


def test_an_instrument_the_model_takes_down_stops_answering_until_it_is_up(twin):
    twin.model.set_device_up("pm-quijano-l8", False)
    down = twin.run_poll("pm-quijano-l8")
    assert down.returncode != 0
    assert "pm-quijano-l8: timeout: no complete answer within 5 s" in down.stderr
    twin.model.set_device_up("pm-quijano-l8", True)
    assert meter_dbm(twin.poll("pm-quijano-l8"), "pm-quijano-l8") == pytest.approx(-11.8, abs=0.1)


def test_devices_are_the_topology_instruments_and_stop_closes_them(tmp_path):
    model = TwinModel(load_topology(), seed=0, clock=ManualClock())
    sims = start_optical_sims(model, workdir=tmp_path)
    try:
        devices = {d["name"]: d for d in sims.devices()}
    finally:
        sims.stop()
    instruments = {i.name: i for i in model.topology.instruments}
    assert devices.keys() == instruments.keys()
    for name, device in devices.items():
        instrument = instruments[name]
        assert device["driver"] == instrument.kind
        assert device["tags"]["node"] == instrument.site
        assert device["tags"]["domain"] == model.topology.site(instrument.site).domain
    tty = tmp_path / "pm-quijano-l8.tty"
    assert devices["pm-quijano-l8"]["visa"]["resource"] == f"ASRL{tty}::INSTR"
    assert not tty.exists()  # the line is gone with stop()
    host, port = devices["otdr-quevedo-l4"]["visa"]["resource"].split("::")[1:3]
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port))):
        pass


def qkdtel(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *argv], capture_output=True, text=True, timeout=120
    )


def test_a_fault_through_sims_fault_reaches_the_instruments_of_sims_up(tmp_path):
    # The operator's path: `qkdtel sims up` in its own process, the fault through its control
    # API (`qkdtel sims fault`), the instruments polled with the configuration it wrote.
    config = tmp_path / "twin.yaml"
    devices = ("osa-quevedo-l4", "otdr-quevedo-l4")
    with SimsProcess(config, ["--families", "optics"]) as sims:
        assert {"osa-quevedo-l4", "otdr-quevedo-l8", "pm-quijano-l8"} <= sims.devices.keys()
        control = json.loads(config.with_suffix(".twin.json").read_text())["control_url"]

        def poll() -> list[Sample]:
            done = qkdtel("poll", "-c", str(config), "-f", "json", *devices)
            assert done.returncode == 0, done.stderr
            return [json.loads(line) for line in done.stdout.splitlines()]

        before = poll()
        fault = ("sims", "fault", "--control", control, "--link", "4", "--add-loss", "3")
        added = qkdtel(*fault, "--at-km", "12")
        assert added.returncode == 0, added.stderr
        during = poll()

    (bend,) = events_near(during, "otdr-quevedo-l4", 12_000)
    assert bend["loss_db"] == pytest.approx(3.0, abs=0.1)
    clear = channel_powers(before, "osa-quevedo-l4")
    faulty = channel_powers(during, "osa-quevedo-l4")
    assert clear and faulty.keys() == clear.keys()
    assert [faulty[c] - clear[c] for c in clear] == pytest.approx([-3.0] * len(clear), abs=0.2)


def test_an_o_band_head_reads_the_o_band_loss_of_the_model(twin):
    # The generated head is C-band; an operator may set the meter to 1310 nm (the DV systems'
    # band): the model's O-band loss (x1.5 of the C-band's) plus the fault.
    document = yaml.safe_load(twin.config.read_text())
    (meter,) = [d for d in document["devices"] if d["driver"] == "powermeter"]
    meter["heads"][0]["wavelength_nm"] = 1310
    twin.config.write_text(yaml.safe_dump(document, sort_keys=False))
    assert meter_dbm(twin.poll(meter["name"]), meter["name"]) == pytest.approx(-11.8 * 1.5, abs=0.1)
    twin.model.add_fibre_fault("8", 2.0, kind="bend")
    faulty = meter_dbm(twin.poll(meter["name"]), meter["name"])
    assert faulty == pytest.approx(-11.8 * 1.5 - 2.0, abs=0.1)

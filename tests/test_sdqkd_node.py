"""Issue 9: SD-QKD nodes over the ETSI GS QKD 015 model (modelled, see the YANG file), read over
NETCONF/SSH from the simulated node at Quevedo, written as the SNMP driver's measurements."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
import yaml
from lxml import etree
from ncclient import manager

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from qkdtel.poller import DevicePoller
from qkdtel.sims.netconf.sdqkd import NodeModel, collector_maps
from qkdtel.sims.netconf.server import NetconfSimServer
from qkdtel.sims.snmp.network import build_channels
from qkdtel.sims.snmp.physics import ModuleModel, Phase
from qkdtel.sims.topology import load_topology
from tests.collector_run import Recorder
from tests.metrics_doc import load_contract
from tests.test_metrics_contract import violations

YANG = Path(__file__).resolve().parents[1] / "drivers" / "sdqkd_node" / "qkdtel-etsi-qkd-015.yang"
PASSWORD = "node-Secret-3"
SIM_TIME = 7_200.0


class FixedClock:
    """Simulated time standing still, so a reading can be compared with the physics directly."""

    def now(self) -> float:
        return SIM_TIME


@pytest.fixture
def node_sim(tmp_path):
    topology = load_topology()
    server = NetconfSimServer(
        NodeModel(topology, "Quevedo", clock=FixedClock()), password=PASSWORD
    ).start()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    peers, links = collector_maps(topology)
    device = {
        "name": "sdqkd-quevedo",
        "driver": "sdqkd_node",
        "interval": 0.5,
        "timeout": 5,
        "tags": {"node": "Quevedo", "domain": "RM"},
        "address": server.host,
        "port": server.port,
        "username": "admin",
        "password": PASSWORD,
        "known_hosts": str(known_hosts),
        "peers": peers,
        "links": links,
    }
    try:
        yield server, device
    finally:
        server.stop()


def poll_twice(device):
    document = {"collector": {"spool_dir": "/tmp/unused"}, "devices": [device]}
    (loaded,) = load_config_text(yaml.safe_dump(document)).devices

    async def run():
        poller = DevicePoller.create(loaded, max_backoff=1.0)
        try:
            return [await poller.poll() for _ in range(2)]
        finally:
            await poller.driver.aclose()

    return asyncio.run(run())


def test_the_model_and_the_nodes_data_validate_with_yanglint(node_sim, tmp_path):
    server, _ = node_sim
    assert subprocess.run(["yanglint", str(YANG)], capture_output=True).returncode == 0
    with manager.connect(
        host=server.host,
        port=server.port,
        username="admin",
        password=PASSWORD,
        hostkey_verify=False,
        allow_agent=False,
        look_for_keys=False,
    ) as m:
        data = m.get().data_ele
    (tmp_path / "node.xml").write_bytes(etree.tostring(data[0]))
    result = subprocess.run(
        ["yanglint", "-t", "data", str(YANG), str(tmp_path / "node.xml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_links_modules_and_apps_follow_the_snmp_physics(node_sim):
    _, device = node_sim
    first, second = poll_twice(device)
    assert first.ok and second.ok, (first.error, second.error)
    assert violations(second.samples, load_contract()) == []
    links = [s for s in second.samples if s.measurement == "qkd_link"]
    topology = load_topology()
    quevedo = {m.name for m in topology.modules if m.site == "Quevedo"}
    ends = [
        (i, c, own)
        for i, c in enumerate(topology.channels)
        for own in (c.alice, c.bob)
        if own in quevedo
    ]
    assert len(links) == len(ends)
    # the same channel models as the SNMP simulators, read at the same simulated instant
    modules = {m.name: ModuleModel(m.name, 0) for m in topology.modules}
    physics = build_channels(topology, 0, modules)
    for index, channel, own in ends:
        (sample,) = [
            s
            for s in links
            if s.tags["module"] == own
            and s.tags["link"] == channel.link
            and s.tags.get("channel") == (str(channel.itu) if channel.itu else None)
            and s.tags["direction"] == ("tx" if own == channel.alice else "rx")
        ]
        reading = physics[index].reading(SIM_TIME)
        assert sample.fields["secret_key_rate_bps"] == round(reading.secret_key_rate_bps)
        assert sample.fields["channel_loss_db"] == pytest.approx(reading.loss_db, abs=0.01)
        peer = topology.module(channel.bob if own == channel.alice else channel.alice).site
        assert sample.tags["peer"] == peer and sample.tags["band"] == channel.band
        if sample.tags["technology"] == "dv" and sample.fields["key_generating"]:
            assert sample.fields["qber"] == pytest.approx(reading.qber, abs=1e-5)
    modules_out = {s.tags["module"]: s for s in second.samples if s.measurement == "qkd_module"}
    assert set(modules_out) == quevedo
    for name, sample in modules_out.items():
        assert sample.fields["links"] == sum(own == name for _, _, own in ends)
    apps = [s for s in second.samples if s.measurement == "qkd_app"]
    assert len(apps) == sum(own == c.alice for _, c, own in ends) > 0
    assert all(a.fields["app_status"] in ("ON", "DISCONNECTED") for a in apps)


def test_sdqkd_points_flow_into_influxdb(node_sim, tmp_path, influxdb, influx_db):
    _, device = node_sim
    document = {
        "collector": {"spool_dir": str(tmp_path / "spool"), "flush_interval": 0.2},
        "sinks": [{"type": "influxdb_v1", "url": influxdb.url, "database": influx_db}],
        "devices": [device],
    }
    recorder = Recorder()
    asyncio.run(Collector(load_config_text(yaml.safe_dump(document)), [recorder]).run(2.5))
    rates = influxdb.query(
        "SELECT last(secret_key_rate_bps) FROM qkd_link WHERE device = 'sdqkd-quevedo' "
        'GROUP BY "link", "peer"',
        influx_db,
    )
    assert {(r["link"], r["peer"]) for r in rates} >= {("4", "Norte"), ("8", "Quijano")}
    apps = influxdb.query("SELECT last(consumed_bits_total) FROM qkd_app", influx_db)
    assert apps and apps[0]["last"] >= 0
    down = influxdb.query("SELECT count(up) FROM qkdtel_device_status WHERE up = false", influx_db)
    assert down == []


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("bad_xml", "reply is not well-formed XML"),
        ("wrong_namespace", "no qkd_node in namespace urn:example:qkdtel:etsi-qkd-015"),
        ("missing_leaves", "]: qkdl_status is missing"),
    ],
)
def test_malformed_node_replies_are_a_clear_per_device_error(node_sim, fault, expected):
    server, device = node_sim
    setattr(server.faults, fault, True)
    for result in poll_twice(device):
        assert not result.ok and result.error_class == "malformed", result.error
        assert result.error.startswith("sdqkd-quevedo (127.0.0.1:") and expected in result.error


def test_a_link_going_down_and_up_between_polls_is_a_qkd_event(tmp_path):
    topology = load_topology()
    node = NodeModel(topology, "Quevedo", clock=FixedClock())
    # find, by the physics' own schedule, a maintenance window of one of the node's links
    end = node.ends[0]
    schedule = node.channels[end.index].schedule
    period = topology.behaviour.maintenance_every_h * 3600
    down_at = next(t for t in range(0, int(period), 60) if schedule.at(t)[0] is Phase.MAINTENANCE)
    up_at = next(
        t for t in range(down_at, 2 * int(period), 60) if schedule.at(t)[0] is Phase.PRODUCING
    )
    before = down_at - 60
    assert before >= 0 and schedule.at(before)[0] is Phase.PRODUCING
    times = iter([float(before), float(down_at), float(up_at)])  # never backwards

    class SteppingClock:
        """One instant per poll: producing, in maintenance, producing again."""

        def __init__(self):
            self.t = next(times)

        def now(self) -> float:
            return self.t

    clock = SteppingClock()
    node.clock = clock
    server = NetconfSimServer(node, password=PASSWORD).start()
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(server.known_hosts_line())
        peers, links = collector_maps(topology)
        device = {
            "name": "sdqkd-quevedo",
            "driver": "sdqkd_node",
            "timeout": 5,
            "address": server.host,
            "port": server.port,
            "username": "admin",
            "password": PASSWORD,
            "known_hosts": str(known_hosts),
            "peers": peers,
            "links": links,
        }
        document = {"collector": {"spool_dir": "/tmp/unused"}, "devices": [device]}
        (loaded,) = load_config_text(yaml.safe_dump(document)).devices

        async def run():
            poller = DevicePoller.create(loaded, max_backoff=1.0)
            results = []
            try:
                for _ in range(3):
                    results.append(await poller.poll())
                    clock.t = next(times, clock.t)
            finally:
                await poller.driver.aclose()
            return results

        results = asyncio.run(run())
    finally:
        server.stop()
    assert all(r.ok for r in results)
    events = [
        [
            s
            for s in r.samples
            if s.measurement == "qkd_event" and s.tags["link"] == end.channel.link
        ]
        for r in results
    ]
    assert events[0] == []
    (down,) = [e for e in events[1] if e.tags["event"] == "link_down"]
    assert down.tags["severity"] == "major" and down.fields["vendor_state"] == "OFF"
    assert down.tags["peer"] == end.peer_site
    assert any(e.tags["event"] == "link_up" for e in events[2])
    assert violations([s for r in results for s in r.samples], load_contract()) == []

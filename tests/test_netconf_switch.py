"""Issue 9: optical switches over NETCONF/SSH against the simulated switch at Quevedo.

The switch (sims/netconf) has, per link ending at Quevedo (3, 4, 8, 9), a quantum and a
classical ingress port (1..8) and the matching egress ports (9..16); at start 1->11 and 3->9
(quantum, link 3 <-> link 4) and 2->12, 4->10 (classical) are connected.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import paramiko
import pytest
import yaml
from lxml import etree
from ncclient import manager

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from qkdtel.drivers.netconf import HostKeyRejected, NetconfSession
from qkdtel.drivers.netconf_switch.control import ChangeFailed, SwitchControl
from qkdtel.drivers.netconf_switch.guards import ChangeRefused
from qkdtel.drivers.netconf_switch.listener import NetconfNotificationListener, NotificationOptions
from qkdtel.drivers.netconf_switch.model import pairs_edit, yang_file
from qkdtel.poller import DevicePoller
from qkdtel.sdk import DeviceSource, ListenerContext
from qkdtel.sims.netconf.switch import INSERTION_LOSS_DB
from qkdtel.sims.topology import load_topology
from tests.collector_run import Recorder
from tests.fixtures_netconf import SIM_PASSWORD
from tests.metrics_doc import load_contract
from tests.test_metrics_contract import violations

START = {1: 11, 2: 12, 3: 9, 4: 10}
LINK_LOSS = {link.id: link.loss_db for link in load_topology().links}


def control(switch_sim, **overrides) -> SwitchControl:
    return SwitchControl("sw-quevedo", switch_sim.switch_options(**overrides), LINK_LOSS, 5.0)


def raw_manager(switch_sim):
    """A second NETCONF client (plain ncclient), as another operator or controller would be."""
    server = switch_sim.server
    return manager.connect(
        host=server.host,
        port=server.port,
        username="admin",
        password=SIM_PASSWORD,
        hostkey_verify=False,
        allow_agent=False,
        look_for_keys=False,
    )


# -- the YANG module --------------------------------------------------------------------------


def test_yang_module_and_the_simulators_data_validate_with_yanglint(switch_sim, tmp_path):
    module = yang_file()
    subprocess.run(["yanglint", str(module)], check=True, capture_output=True)
    with raw_manager(switch_sim) as m:
        data = m.get().data_ele
    (tmp_path / "get.xml").write_bytes(etree.tostring(data[0]))
    result = subprocess.run(
        ["yanglint", "-t", "data", str(module), str(tmp_path / "get.xml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    # the check can fail: a pair without its mandatory egress is refused
    bad = etree.tostring(data[0]).replace(b"<egress>11</egress>", b"")
    (tmp_path / "bad.xml").write_bytes(bad)
    result = subprocess.run(
        ["yanglint", "-t", "data", str(module), str(tmp_path / "bad.xml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "egress" in result.stderr


# -- host keys and the session --------------------------------------------------------------


def test_unknown_host_key_is_refused_with_its_fingerprint(switch_sim):
    switch_sim.known_hosts.write_text("")
    session = NetconfSession("sw-quevedo", switch_sim.switch_options(), 5.0)
    with pytest.raises(HostKeyRejected) as caught:
        session.manager()
    message = str(caught.value)
    fingerprint = switch_sim.server.host_key.get_fingerprint().hex(":")
    assert "unknown host key" in message and f"MD5:{fingerprint}" in message
    assert str(switch_sim.known_hosts) in message and SIM_PASSWORD not in message
    assert caught.value.kind == "auth"


def test_changed_host_key_is_refused_as_changed(switch_sim):
    server = switch_sim.server
    impostor = paramiko.ECDSAKey.generate()
    switch_sim.known_hosts.write_text(
        f"[{server.host}]:{server.port} {impostor.get_name()} {impostor.get_base64()}\n"
    )
    session = NetconfSession("sw-quevedo", switch_sim.switch_options(), 5.0)
    with pytest.raises(HostKeyRejected, match="host key CHANGED") as caught:
        session.manager()
    assert server.host_key.get_fingerprint().hex(":") in str(caught.value)
    assert server.operations == []  # refused before any NETCONF was spoken


def test_one_session_is_reused_and_reopened_after_a_drop_with_backoff(switch_sim):
    session = NetconfSession("sw-quevedo", switch_sim.switch_options(), 5.0)
    for _ in range(3):
        session.call("get", lambda m: m.get())
    assert session.connects == 1
    switch_sim.server.drop_sessions()
    time.sleep(0.2)
    session.call("get", lambda m: m.get())
    assert session.connects == 2
    session.close()


def test_rpc_error_carries_tag_path_and_message(switch_sim):
    session = NetconfSession("sw-quevedo", switch_sim.switch_options(), 5.0)
    bad = pairs_edit({}, {1: 2})  # ingress to ingress: the switch refuses it at validate
    session.call("edit-config", lambda m: m.edit_config(target="candidate", config=bad))
    with pytest.raises(Exception) as caught:
        session.call("validate", lambda m: m.validate(source="candidate"))
    error = caught.value
    assert error.kind == "instrument_error" and error.tag == "invalid-value"
    assert (
        error.path == "/qos:optical-switch/qos:cross-connects/qos:pair[qos:ingress='1']/qos:egress"
    )
    assert str(error).startswith("sw-quevedo (127.0.0.1:") and "egress 2 is an ingress port" in str(
        error
    )
    session.close()


# -- control --------------------------------------------------------------------------------


def test_connect_move_disconnect_and_powers_follow(switch_sim):
    ctl = control(switch_sim)
    outcome = ctl.change("connect", 7, 13)  # link 9 quantum in -> link 8 quantum out
    assert outcome.diff == ["+ 7 -> 13"] and switch_sim.pairs == {**START, 7: 13}
    ports = ctl.state().ports
    assert ports[13].power_dbm == pytest.approx(ports[7].power_dbm - INSERTION_LOSS_DB, abs=0.1)
    ctl.change("move", 7, 15)
    assert switch_sim.pairs == {**START, 7: 15}
    ports = ctl.state().ports
    assert ports[13].power_dbm == -60.0 and ports[15].power_dbm > -60.0
    ctl.change("disconnect", 7)
    assert switch_sim.pairs == START
    assert not switch_sim.server.confirm_pending
    ops = switch_sim.server.operations
    assert ops.count("commit") == 6 and ops.count("validate") == 3 and ops.count("lock") == 3
    ctl.close()


def test_dry_run_prints_the_diff_and_sends_no_change(switch_sim):
    ctl = control(switch_sim)
    outcome = ctl.change("move", 1, 15, dry_run=True)
    assert outcome.diff == ["- 1 -> 11", "+ 1 -> 15"] and not outcome.applied
    assert switch_sim.pairs == START
    assert switch_sim.server.operations == ["get"]
    ctl.close()


def test_an_unconfirmed_commit_rolls_back_by_itself(switch_sim):
    with raw_manager(switch_sim) as m:
        m.edit_config(target="candidate", config=pairs_edit(START, {**START, 7: 13}))
        m.commit(confirmed=True, timeout="1")
        assert switch_sim.pairs == {**START, 7: 13}
        time.sleep(1.6)
        assert switch_sim.pairs == START  # the session is still open: the timeout did it


def test_a_lock_held_by_another_session_is_a_clear_error(switch_sim):
    with raw_manager(switch_sim) as other:
        other.lock(target="candidate")
        with pytest.raises(ChangeFailed) as caught:
            control(switch_sim).change("connect", 7, 13)
        message = str(caught.value)
        assert "lock candidate: rpc-error lock-denied" in message
        assert "candidate is locked by session" in message
        assert "another session" in message and "nothing was changed" in message
        assert switch_sim.pairs == START
        assert "edit-config" not in switch_sim.server.operations


def test_a_classical_port_is_refused_without_the_override(switch_sim):
    ctl = control(switch_sim)
    with pytest.raises(ChangeRefused, match=r"port 2, 12 carries classical .*--override"):
        ctl.change("disconnect", 2)
    assert switch_sim.pairs == START and switch_sim.server.operations == ["get"]
    ctl.change("disconnect", 2, override_classical=True)
    assert 2 not in switch_sim.pairs
    ctl.close()


def test_an_over_budget_quantum_path_is_refused_with_the_figure(switch_sim):
    ctl = control(switch_sim)
    # link 4 (10.0 dB) into link 8 (11.8 dB): 21.8 + switch 0.5 + two mux passes 2.0 = 24.3
    with pytest.raises(ChangeRefused) as caught:
        ctl.change("move", 3, 13)
    assert "24.3 dB" in str(caught.value) and "CV budget of 23.0 dB" in str(caught.value)
    assert switch_sim.pairs == START and switch_sim.server.operations == ["get"]
    ctl.change("move", 3, 15)  # link 4 into link 9: 10.0 + 2.0 + 2.5 = 14.5 dB, allowed
    assert switch_sim.pairs[3] == 15
    ctl.close()


def test_a_session_lost_mid_change_leaves_the_switch_rolled_back(switch_sim):
    switch_sim.server.faults.drop_on = "confirm"
    with pytest.raises(ChangeFailed) as caught:
        control(switch_sim).change("connect", 7, 13)
    assert "rolls the change back by itself" in str(caught.value)
    assert "commit (confirm)" in str(caught.value)
    deadline = time.monotonic() + 3
    while switch_sim.pairs != START and time.monotonic() < deadline:
        time.sleep(0.05)
    assert switch_sim.pairs == START and not switch_sim.server.confirm_pending


# -- polling through the collector ----------------------------------------------------------


def poll_once(switch_sim, **overrides):
    document = {
        "collector": {"spool_dir": "/tmp/unused"},
        "devices": [switch_sim.device(**overrides)],
    }
    (device,) = load_config_text(yaml.safe_dump(document)).devices

    async def run():
        poller = DevicePoller.create(device, max_backoff=1.0)
        try:
            return [await poller.poll() for _ in range(2)]
        finally:
            await poller.driver.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("bad_xml", "reply is not well-formed XML"),
        ("wrong_namespace", "no optical-switch in namespace urn:example:qkdtel:optical-switch"),
        ("missing_leaves", "cross-connects/pair[ingress=1]: egress is missing"),
    ],
)
def test_malformed_replies_are_a_clear_per_device_error(switch_sim, fault, expected):
    setattr(switch_sim.server.faults, fault, True)
    results = poll_once(switch_sim)
    for result in results:
        assert not result.ok and result.error_class == "malformed", result.error
        assert result.error.startswith("sw-quevedo (127.0.0.1:") and expected in result.error
    setattr(switch_sim.server.faults, fault, False)
    (first, _) = poll_once(switch_sim)
    assert first.ok


# -- the daemon, the listener and InfluxDB ----------------------------------------------------


def test_switch_telemetry_and_events_flow_into_influxdb(switch_sim, tmp_path, influxdb, influx_db):
    subscription = {"device": "sw-quevedo", **switch_sim.options()}
    del subscription["ports"]
    document = {
        "collector": {"spool_dir": str(tmp_path / "spool"), "flush_interval": 0.2},
        "sinks": [{"type": "influxdb_v1", "url": influxdb.url, "database": influx_db}],
        "devices": [switch_sim.device(interval=1)],
        "listeners": [{"type": "netconf_notifications", "switches": [subscription]}],
    }
    loaded = load_config_text(yaml.safe_dump(document))
    recorder = Recorder()

    async def scenario() -> None:
        collector = Collector(loaded, observers=[recorder])
        run = asyncio.create_task(collector.run(duration=4.0))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(control(switch_sim).change, "connect", 7, 13)
        await run

    asyncio.run(scenario())
    assert violations(recorder.samples, load_contract()) == []
    powers = influxdb.query(
        "SELECT last(power_dbm) FROM optical_switch_port WHERE device = 'sw-quevedo' "
        'GROUP BY "port"',
        influx_db,
    )
    by_port = {int(r["port"]): r["last"] for r in powers}
    assert len(by_port) == 16
    # link 9 (2.0 dB) quantum pilot at -35 dBm, through the switch (0.5 dB) to port 13
    assert by_port[13] == pytest.approx(-37.5, abs=0.2) and by_port[16] == -60.0
    events = influxdb.query(
        'SELECT "source", "event", "ingress", "egress" FROM optical_switch_event', influx_db
    )
    seen = [(r["source"], r["event"], r["ingress"], r["egress"]) for r in events]
    assert sorted(seen) == [
        ("notification", "cross_connect_added", "7", "13"),
        ("poll", "cross_connect_added", "7", "13"),
    ]
    (switch,) = influxdb.query("SELECT last(cross_connect_map) FROM optical_switch", influx_db)
    assert switch["last"] == "1>11,2>12,3>9,4>10,7>13"
    down = influxdb.query("SELECT count(up) FROM qkdtel_device_status WHERE up = false", influx_db)
    assert down == []


# -- qkdtel switch ----------------------------------------------------------------------------


def qkdtel(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *argv], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def switch_config(switch_sim, tmp_path):
    path = tmp_path / "qkdtel.yaml"
    document = {"collector": {"spool_dir": str(tmp_path / "spool")}}
    document["devices"] = [switch_sim.device()]
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_cli_dry_run_connect_show_disconnect(switch_sim, switch_config):
    dry = qkdtel("switch", "connect", "-c", switch_config, "sw-quevedo", "7", "13", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+ 7 -> 13" in dry.stdout and "dry run, nothing sent" in dry.stdout
    assert switch_sim.pairs == START and "edit-config" not in switch_sim.server.operations
    done = qkdtel("switch", "connect", "-c", switch_config, "sw-quevedo", "7", "13")
    assert done.returncode == 0 and "committed and confirmed" in done.stdout, done.stderr
    assert switch_sim.pairs == {**START, 7: 13}
    show = qkdtel("switch", "show", "-c", switch_config, "sw-quevedo")
    assert show.returncode == 0 and "l9-q-in" in show.stdout and "l8-q-out" in show.stdout
    gone = qkdtel("switch", "disconnect", "-c", switch_config, "sw-quevedo", "7")
    assert gone.returncode == 0 and "- 7 -> 13" in gone.stdout
    assert switch_sim.pairs == START
    assert SIM_PASSWORD not in dry.stdout + done.stdout + show.stdout + gone.stdout


def test_cli_guards_and_mistakes_are_one_line_errors_exit_2(switch_sim, switch_config):
    over = qkdtel("switch", "move", "-c", switch_config, "sw-quevedo", "3", "13")
    assert over.returncode == 2 and "24.3 dB" in over.stderr and "Traceback" not in over.stderr
    classical = qkdtel("switch", "disconnect", "-c", switch_config, "sw-quevedo", "4")
    assert classical.returncode == 2 and "--override-classical" in classical.stderr
    missing = qkdtel("switch", "show", "-c", switch_config, "sw-nowhere")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"{switch_config}: no device named 'sw-nowhere'"
    assert switch_sim.pairs == START and "edit-config" not in switch_sim.server.operations


def test_cli_diff_shows_a_pending_candidate_edit(switch_sim, switch_config):
    with raw_manager(switch_sim) as other:
        other.edit_config(target="candidate", config=pairs_edit(START, {**START, 8: 14}))
        result = qkdtel("switch", "diff", "-c", switch_config, "sw-quevedo")
    assert result.returncode == 0 and result.stdout.strip() == "+ 8 -> 14"


def test_the_listener_subscribes_again_after_a_drop(switch_sim):
    subscription = {"device": "sw-quevedo", **switch_sim.options()}
    del subscription["ports"]
    options = NotificationOptions.model_validate({"switches": [subscription]})
    listener = NetconfNotificationListener("nc", options)
    received: list = []

    async def emit(samples):
        received.extend(samples)

    async def scenario():
        context = ListenerContext(
            [DeviceSource("sw-quevedo", "netconf_switch", None, {"node": "Q"})]
        )
        await listener.start(emit, context)
        try:
            switch_sim.server.drop_sessions()
            deadline = time.monotonic() + 5
            while switch_sim.server.operations.count("create-subscription") < 2:
                assert time.monotonic() < deadline, switch_sim.server.operations
                await asyncio.sleep(0.1)
            await asyncio.to_thread(
                control(switch_sim).change, "connect", 8, 14, override_classical=True
            )
            while not received and time.monotonic() < deadline + 5:
                await asyncio.sleep(0.1)
        finally:
            await listener.stop()

    asyncio.run(scenario())
    (event,) = received
    assert event.tags == {
        "event": "cross_connect_added",
        "ingress": "8",
        "egress": "14",
        "device": "sw-quevedo",
        "node": "Q",
    }
    assert event.fields["source"] == "notification"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("switch", 'cross_connect_map="1>11,2>12,3>9,4>10"'),
        ("sdqkd", "qkd_link,band=O,device=sdqkd-quevedo,direction=rx,link=3,module=idq-quevedo-l3"),
    ],
)
def test_qkdtel_sims_switch_and_sdqkd_serve_what_their_config_polls(tmp_path, command, expected):
    config = tmp_path / "sim.yaml"
    sim = subprocess.Popen(
        [sys.executable, "-m", "qkdtel.cli", "sims", command, "--config-out", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not config.exists() and sim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert config.exists(), sim.stderr.read() if sim.poll() is not None else "no config"
        polled = qkdtel("poll", "-c", str(config), "-f", "line")
    finally:
        sim.terminate()
        sim.wait(10)
    assert polled.returncode == 0, polled.stderr
    assert expected in polled.stdout
    password = config.with_suffix(".password").read_text().strip()
    assert password not in polled.stdout + polled.stderr

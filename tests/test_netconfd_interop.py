"""Issue 9: the switch driver and `SwitchControl` against a NETCONF server nobody here wrote:
Debian's netconfd (yuma123) with qkdtel-optical-switch loaded, behind OpenSSH (see
tests/fixtures_netconfd.py). netconfd keeps configuration only, so there is no power or
oper-state to read: the driver must report the map and the ports without them."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml
from ncclient import manager

from qkdtel.config import load_config_text
from qkdtel.drivers.netconf_switch.control import ChangeFailed, SwitchControl
from qkdtel.drivers.netconf_switch.guards import ChangeRefused
from qkdtel.drivers.netconf_switch.model import parse_switch, subtree_filter
from qkdtel.drivers.netconf_switch.options import SwitchOptions
from qkdtel.poller import DevicePoller
from qkdtel.sims.topology import load_topology
from tests.fixtures_netconfd import seed_ports

LINK_LOSS = {link.id: link.loss_db for link in load_topology().links}


def connect(server):
    return manager.connect(
        host="127.0.0.1",
        port=server.port,
        username=server.user,
        key_filename=str(server.key_file),
        hostkey_verify=False,
        allow_agent=False,
        look_for_keys=False,
    )


def running_pairs(server) -> dict[int, int]:
    with connect(server) as m:
        reply = m.get_config("running", filter=subtree_filter())
        return parse_switch(reply.data_ele, "netconfd").pairs


@pytest.fixture
def seeded(netconfd):
    with connect(netconfd) as m:
        seed_ports(m)
    return netconfd


def control(server, **overrides) -> SwitchControl:
    options = SwitchOptions.model_validate(server.options(**overrides))
    return SwitchControl("sw-netconfd", options, LINK_LOSS, 10.0)


def test_connect_move_disconnect_against_netconfd(seeded):
    ctl = control(seeded)
    assert ctl.change("connect", 1, 7).diff == ["+ 1 -> 7"]
    assert running_pairs(seeded) == {1: 7}
    ctl.change("move", 1, 8)
    assert running_pairs(seeded) == {1: 8}
    ctl.change("disconnect", 1)
    assert running_pairs(seeded) == {}
    with pytest.raises(ChangeRefused, match="classical"):
        ctl.change("connect", 2, 6)
    ctl.close()


def test_netconfd_quirk_validate_then_commit_loses_the_change_and_the_read_back_catches_it(
    seeded,
):
    # netconfd 2.13: after <validate source=candidate>, the next commit drops the candidate
    # and leaves running as it was. The read-back before the confirming commit notices it,
    # so the change fails cleanly instead of being reported done.
    ctl = control(seeded, validate_candidate=True)
    with pytest.raises(ChangeFailed, match=r"after the confirmed commit are \{\}, not the planned"):
        ctl.change("connect", 1, 7)
    assert running_pairs(seeded) == {}
    ctl.close()


def test_netconfd_refuses_what_its_model_forbids_as_a_clear_rpc_error(seeded):
    # port 20 does not exist (unconfigured, hence the override): netconfd refuses the leafref
    ctl = control(seeded)
    with pytest.raises(ChangeFailed) as caught:
        ctl.change("connect", 1, 20, override_classical=True)
    message = str(caught.value)
    assert "rpc-error" in message and "nothing was changed" in message
    assert running_pairs(seeded) == {}
    ctl.close()


def test_a_lock_held_by_another_session_on_netconfd(seeded):
    with connect(seeded) as other:
        other.lock(target="candidate")
        with pytest.raises(ChangeFailed, match="lock candidate: rpc-error lock-denied"):
            control(seeded).change("connect", 1, 7)
    assert running_pairs(seeded) == {}


def test_netconfd_rolls_back_when_the_session_is_lost_after_the_confirmed_commit(seeded):
    ctl = control(seeded)
    verify = ctl._verify

    def cut_then_verify(after):
        # Injected fault: a network cut right after the confirmed commit, which netconfd
        # cannot be told to produce; closing our SSH transport is what a cut looks like to it.
        ctl.session._manager._session.close()
        return verify(after)

    ctl._verify = cut_then_verify
    with pytest.raises(ChangeFailed, match="rolls the change back by itself"):
        ctl.change("connect", 1, 7)
    deadline = time.monotonic() + 10  # at once as the session ends, not at the 60 s timeout
    while running_pairs(seeded) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_pairs(seeded) == {}, seeded.log.read_text()[-1500:]


def test_the_driver_polls_netconfd(seeded):
    document = {
        "collector": {"spool_dir": "/tmp/unused"},
        "devices": [
            {"name": "sw-netconfd", "driver": "netconf_switch", "timeout": 10, **seeded.options()}
        ],
    }
    (device,) = load_config_text(yaml.safe_dump(document)).devices

    async def run():
        poller = DevicePoller.create(device, max_backoff=1.0)
        try:
            first = await poller.poll()
            await asyncio.to_thread(control(seeded).change, "connect", 3, 8)
            return first, await poller.poll()
        finally:
            await poller.driver.aclose()

    first, second = asyncio.run(run())
    assert first.ok and second.ok, (first.error, second.error)
    (switch,) = [s for s in second.samples if s.measurement == "optical_switch"]
    assert switch.fields["cross_connect_map"] == "3>8" and switch.fields["ports"] == 8
    ports = {s.tags["port"]: s for s in second.samples if s.measurement == "optical_switch_port"}
    assert ports["8"].fields["peer_port"] == 3 and ports["8"].tags["label"] == "l9-q-out"
    assert "power_dbm" not in ports["8"].fields  # netconfd has no power monitor to read
    (event,) = [s for s in second.samples if s.measurement == "optical_switch_event"]
    assert event.tags == {
        "event": "cross_connect_added",
        "ingress": "3",
        "egress": "8",
        "device": "sw-netconfd",
    }

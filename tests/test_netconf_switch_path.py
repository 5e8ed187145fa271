"""The loss-budget guard follows a quantum path across several switches (issue 9).

Three switches of the MadQCI twin, each a simulated NETCONF switch (sims/netconf): Quijote
(links 1, 2, 3), Quevedo (links 3, 4, 8, 9) and Norte (links 4, 5, 7). Link losses come from
sims/madqci.yaml: link 2 6.2 dB, link 3 4.3 dB, link 4 10.0 dB, link 9 2.0 dB; each switch
crossed adds 0.5 dB and two multiplexer passes of 1.0 dB. Port numbers follow `site_switch`:
at Quijote link 2's quantum ports are 3 (in) and 9 (out), link 3's 5 and 11; at Quevedo link
3's are 1 and 9, link 4's 3 and 11, link 9's 7 and 15.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from qkdtel.drivers.netconf_switch.control import SwitchControl
from qkdtel.drivers.netconf_switch.guards import ChangeRefused, OtherSwitch, check_budget
from qkdtel.drivers.netconf_switch.options import SwitchOptions
from qkdtel.sims.netconf import NetconfSimServer, site_switch
from qkdtel.sims.topology import load_topology
from tests.fixtures_netconf import SIM_PASSWORD, SwitchSim

LINK_LOSS = {link.id: link.loss_db for link in load_topology().links}
NOT_A_CHANGE = {"get", "close-session"}  # a read, and the polite end of the read's session


def start_sim(site: str, tmp_path: Path, serve: bool = True) -> SwitchSim:
    """The simulated switch at `site`; `serve=False`: its socket closed without ever serving
    (a switch that is down: connections to its address are refused)."""
    server = NetconfSimServer(site_switch(load_topology(), site), password=SIM_PASSWORD)
    if serve:
        server.start()
    else:
        server.stop()
    known_hosts = tmp_path / f"known_hosts-{site}"
    known_hosts.write_text(server.known_hosts_line())
    return SwitchSim(server, known_hosts)


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[dict[str, SwitchSim]]:
    """Quijote and Quevedo served; Norte down (nothing listens on its address)."""
    running = {site: start_sim(site, tmp_path) for site in ("Quijote", "Quevedo")}
    running["Norte"] = start_sim("Norte", tmp_path, serve=False)
    try:
        yield running
    finally:
        for sim in running.values():
            sim.server.stop()


def control(sims: dict[str, SwitchSim], site: str, *others: str) -> SwitchControl:
    """A `SwitchControl` for `site` that follows paths across the switches `others`."""
    return SwitchControl(
        f"sw-{site.lower()}",
        sims[site].switch_options(),
        LINK_LOSS,
        3.0,
        {f"sw-{o.lower()}": sims[o].switch_options() for o in others},
    )


def prepare(sims: dict[str, SwitchSim]) -> None:
    """Quijote sends link 2 onto link 3 (3 -> 11, moved from link 1); Quevedo's link 3 (port 1)
    is left free."""
    quijote = control(sims, "Quijote")
    quijote.change("move", 3, 11)
    quijote.close()
    quevedo = control(sims, "Quevedo")
    quevedo.change("disconnect", 1)
    quevedo.close()


def test_a_path_over_budget_only_because_of_the_onward_hop_is_refused(sims):
    prepare(sims)
    quijote_ops = len(sims["Quijote"].server.operations)
    quevedo_ops = len(sims["Quevedo"].server.operations)
    quevedo = control(sims, "Quevedo", "Quijote")
    # link 3 -> link 4 alone: 4.3 + 10.0 + 0.5 + 2.0 = 16.8 dB, within 23 dB; but Quijote
    # feeds link 2 into link 3: 6.2 + 4.3 + 10.0 + 2 x 0.5 + 4 x 1.0 = 25.5 dB
    with pytest.raises(ChangeRefused) as caught:
        quevedo.change("connect", 1, 11)
    message = str(caught.value)
    assert "link 2 -> sw-quijote 3 -> 11 -> link 3 -> sw-quevedo 1 -> 11 -> link 4" in message
    assert "25.5 dB (fibre 20.5 + 2 switches 1.0 + multiplexers 4.0)" in message
    assert "CV budget of 23.0 dB" in message
    assert 1 not in sims["Quevedo"].pairs
    assert sims["Quevedo"].server.operations[quevedo_ops:] == ["get"]  # nothing sent
    # within budget: link 2 -> 3 -> 9 is 6.2 + 4.3 + 2.0 + 1.0 + 4.0 = 17.5 dB
    quevedo.change("connect", 1, 15)
    assert sims["Quevedo"].pairs[1] == 15
    quevedo.close()
    read = sims["Quijote"].server.operations[quijote_ops:]
    assert "get" in read and set(read) <= NOT_A_CHANGE, read
    assert sims["Quijote"].pairs[3] == 11


def test_the_path_is_followed_downstream_too(sims):
    """Quijote sends link 3 into link 2 (5 -> 9); Quevedo then feeding link 4 into link 3."""
    quijote = control(sims, "Quijote")
    quijote.change("disconnect", 1)  # link 1 -> link 2 frees link 2's egress
    quijote.change("connect", 5, 9)
    quijote.close()
    quevedo = control(sims, "Quevedo", "Quijote")
    quevedo.change("disconnect", 3)
    with pytest.raises(
        ChangeRefused,
        match=r"link 4 -> sw-quevedo 3 -> 9 -> link 3 -> "
        r"sw-quijote 5 -> 9 -> link 2\) would lose 25\.5 dB",
    ):
        quevedo.change("connect", 3, 9)
    quevedo.close()


def test_a_loop_through_the_switches_is_refused(sims):
    """Quijote turns link 3 round (5 -> 11); Quevedo doing the same (1 -> 9) closes a ring."""
    quijote = control(sims, "Quijote")
    quijote.change("connect", 5, 11)
    quijote.close()
    quevedo = control(sims, "Quevedo", "Quijote")
    quevedo.change("disconnect", 1)
    quevedo.change("disconnect", 3)
    with pytest.raises(ChangeRefused, match=r"sw-quevedo: quantum path loops back"):
        quevedo.change("connect", 1, 9)
    assert 1 not in sims["Quevedo"].pairs
    quevedo.close()


def test_an_unreachable_switch_on_the_path_refuses_unless_local_budget_only(sims):
    prepare(sims)
    quevedo = control(sims, "Quevedo", "Quijote", "Norte")
    # link 3 -> link 9 does not reach Norte: checked end to end although Norte is down
    quevedo.change("connect", 1, 15)
    quevedo.change("disconnect", 1)
    with pytest.raises(ChangeRefused) as caught:
        quevedo.change("connect", 1, 11)  # link 4 ends at Norte
    message = str(caught.value)
    assert message.startswith("cannot check the loss budget: sw-norte (far end of link 4)")
    assert "--local-budget-only" in message and SIM_PASSWORD not in message
    assert 1 not in sims["Quevedo"].pairs
    before = len(sims["Quijote"].server.operations)
    quevedo.change("connect", 1, 11, local_budget_only=True)  # this hop: 16.8 dB
    assert sims["Quevedo"].pairs[1] == 11
    assert sims["Quijote"].server.operations[before:] == []  # the others were not read
    quevedo.close()


def qkdtel(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *argv], capture_output=True, text=True, timeout=60
    )


def write_config(path: Path, sims: dict[str, SwitchSim], *sites: str) -> str:
    devices = [sims[s].device(f"sw-{s.lower()}") for s in sites]
    path.write_text(
        yaml.safe_dump({"collector": {"spool_dir": str(path.parent)}, "devices": devices})
    )
    return str(path)


def test_cli_follows_the_path_and_local_budget_only(sims, tmp_path):
    prepare(sims)
    quijote_ops = len(sims["Quijote"].server.operations)
    two = write_config(tmp_path / "two.yaml", sims, "Quijote", "Quevedo")
    over = qkdtel("switch", "connect", "-c", two, "sw-quevedo", "1", "11", "--dry-run")
    assert over.returncode == 2 and "Traceback" not in over.stderr, over.stderr
    assert "sw-quijote 3 -> 11" in over.stderr and "25.5 dB" in over.stderr
    three = write_config(tmp_path / "three.yaml", sims, "Quijote", "Quevedo", "Norte")
    down = qkdtel("switch", "connect", "-c", three, "sw-quevedo", "1", "11")
    assert down.returncode == 2 and "cannot check the loss budget: sw-norte" in down.stderr
    assert "Traceback" not in down.stderr and SIM_PASSWORD not in down.stderr
    assert 1 not in sims["Quevedo"].pairs
    local = qkdtel("switch", "connect", "-c", three, "sw-quevedo", "1", "11", "--local-budget-only")
    assert local.returncode == 0 and "committed and confirmed" in local.stdout, local.stderr
    assert sims["Quevedo"].pairs[1] == 11
    read = sims["Quijote"].server.operations[quijote_ops:]
    assert "get" in read and set(read) <= NOT_A_CHANGE, read


def switch_options(ports: dict[int, dict[str, str]]) -> SwitchOptions:
    """Options for the pure guard only (never connected to: no host key to check)."""
    return SwitchOptions.model_validate(
        {
            "address": "192.0.2.1",
            "username": "admin",
            "password": "unused",
            "host_key_verify": False,
            "ports": ports,
        }
    )


def test_the_guard_follows_the_path_on_ports_of_its_own_technology():
    """Pure guard, data only: link 3 carries a CV and a DV channel, each on its own ports at
    Quijote; only the CV cross-connect continues a CV path."""
    quevedo = switch_options(
        {
            1: {"carries": "quantum", "link": "3", "technology": "cv"},
            11: {"carries": "quantum", "link": "4", "technology": "cv"},
        }
    )
    quijote_ports = {
        3: {"carries": "quantum", "link": "2", "technology": "cv"},
        11: {"carries": "quantum", "link": "3", "technology": "cv"},
        4: {"carries": "quantum", "link": "1", "technology": "dv"},
        12: {"carries": "quantum", "link": "3", "technology": "dv"},
    }
    quijote = switch_options(quijote_ports)
    dv_only = {"sw-quijote": OtherSwitch("sw-quijote", quijote, {4: 12})}
    check_budget("sw-quevedo", {}, {1: 11}, quevedo, LINK_LOSS, dv_only)  # 16.8 dB: this hop
    both = {"sw-quijote": OtherSwitch("sw-quijote", quijote, {4: 12, 3: 11})}
    with pytest.raises(ChangeRefused, match=r"link 2 -> sw-quijote 3 -> 11 -> link 3 -> "):
        check_budget("sw-quevedo", {}, {1: 11}, quevedo, LINK_LOSS, both)

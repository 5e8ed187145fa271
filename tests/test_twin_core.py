"""The twin's core (issue 13): one model behind every simulator of `qkdtel sims up`.

Everything here crosses the process boundary the operator crosses: `sims up` runs in a child
process, faults go through its control API (`qkdtel sims fault`), switch moves through NETCONF
(`qkdtel switch`), and what the network shows is read with `qkdtel poll` over SNMP.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qkdtel.sims.clock import ManualClock
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.topology import TopologyError, load_topology, parse_topology
from qkdtel.sims.twin.model import TwinModel

QKDTEL = [sys.executable, "-m", "qkdtel.cli"]
TOPOLOGY = Path(__file__).parents[1] / "sims" / "madqci.yaml"


def qkdtel(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*QKDTEL, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def poll_links(config: Path, device: str) -> list[dict]:
    """The `qkd_link` points of one `qkdtel poll` of `device` (the real qkd_snmp driver)."""
    out = qkdtel("poll", "-c", str(config), "-f", "json", device).stdout
    points = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [p for p in points if p["measurement"] == "qkd_link"]


def rate(points: list[dict], link: str, direction: str, channel: str | None = None) -> float:
    """Sum of the secret key rates of the rows of `link` in `direction` (and ITU channel)."""
    rows = [
        p
        for p in points
        if p["tags"]["link"] == link
        and p["tags"]["direction"] == direction
        and (channel is None or p["tags"].get("channel") == channel)
    ]
    assert rows, (link, direction, [p["tags"] for p in points])
    return sum(p["fields"]["secret_key_rate_bps"] for p in rows)


def fault(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return qkdtel("sims", "fault", "--control", str(config), *args, check=check)


# ---- the model itself (no I/O: the same object every simulator reads) -----------------------


def test_model_fault_lowers_the_rate_and_a_break_zeroes_it():
    topology = load_topology()
    model = TwinModel(topology, seed=0, clock=ManualClock(3600.0))
    idq4 = next(c for c in topology.channels if c.link == "4" and c.band == "O")
    cv4 = next(c for c in topology.channels if c.link == "4" and c.alice == "hwdu-norte-l4")
    before, snr = model.channel_skr_bps(idq4), model.channel_model(cv4).reading(3600.0).snr_db
    model.add_fibre_fault("4", 6.0, 3.0, "splice")
    assert model.channel_model(cv4).reading(3601.0).snr_db == pytest.approx(snr - 6.0, abs=0.5)
    assert model.fibre_faults("4")[0].distance_km == 3.0
    assert model.extra_loss_db("4") == 6.0 and model.path_extra_loss_db(idq4) == 6.0
    assert 0.2 * before < model.channel_skr_bps(idq4) < 0.3 * before  # DV: ~ transmittance
    assert model.link_loss_db("4", "O") == pytest.approx(15.0 + 6.0, abs=0.06)
    model.add_fibre_fault("4", 14.0, kind="break")  # 20 dB in all: no signal
    assert model.channel_skr_bps(idq4) == 0.0
    assert model.pair_generation_bps("Quevedo", "Norte") == 0.0
    model.clear_fibre_faults("4")
    assert model.channel_skr_bps(idq4) == pytest.approx(before)
    with pytest.raises(ValueError, match=r"link 4 is 24\.8 km long"):
        model.add_fibre_fault("4", 1.0, 30.0)


def test_model_switch_map_decides_which_cv_path_carries_key():
    topology = load_topology()
    model = TwinModel(topology, seed=0, clock=ManualClock(3600.0))
    seen: list[str] = []
    model.subscribe(seen.append)
    path = [c for c in topology.channels if c.link == "3+4"]
    direct = [c for c in topology.channels if c.link == "4" and c.alice == "hwdu-quevedo-l4"]
    assert all(model.channel_skr_bps(c) == 0.0 and not model.lit(c) for c in path)
    assert all(model.channel_skr_bps(c) > 0 for c in direct)
    # Quevedo: link 3's light goes out on link 4; the module of link 4 is unplugged
    model.set_cross_connects(
        "sw-quevedo", {"l3": "l4", "l4": "hwdu-quevedo-l4", "hwdu-quevedo-l3": "l3"}
    )
    assert seen == ["switch"]
    assert all(model.channel_skr_bps(c) > 0 for c in path)
    assert all(model.path_extra_loss_db(c) is None for c in direct)
    assert all(model.channel_skr_bps(c) == 0.0 for c in direct)
    assert model.pair_generation_bps("Quijote", "Norte") > 0
    with pytest.raises(ValueError, match="no port l9"):
        model.set_cross_connects("sw-quevedo", {"l9": "l4"})


# ---- the topology ---------------------------------------------------------------------------


def test_the_bundled_twin_has_its_switches_key_managers_encryptors_and_instruments():
    topology = load_topology()
    assert [s.name for s in topology.switches] == ["sw-quijote", "sw-quevedo", "sw-norte"]
    layers = [e.layer for e in topology.encryptors]
    assert layers.count("L1") == 3 and layers.count("L2") == 6
    assert {k.site for k in topology.key_managers} == {m.site for m in topology.modules}
    assert topology.qrng is not None and topology.qrng.invented
    kinds = {i.kind for i in topology.instruments}
    assert kinds == {"osa", "otdr", "powermeter"}


BROKEN_ADDITIONS = """
switches:
  - name: sw-quevedo
    site: Quevedo
    ports:
      - {name: l3, link: "3"}
      - {name: l9x, link: "99"}
      - {name: l8, link: "8"}
      - {name: idq, module: idq-norte-l4}
    cross_connects: {l3: nowhere, l8: l3}
key_managers:
  - {name: kme-quevedo, site: Quevedo, sae_id: SAE-Q, peers: [Norte]}
encryptors:
  - {name: enc-x, layer: L2, a: Quevedo, b: Norte, key_manager: kme-nowhere, refresh_s: 10}
instruments:
  - {name: osa-x, kind: osa, site: Quijote, link: "4"}
"""


def test_topology_errors_name_the_path():
    text = TOPOLOGY.read_text(encoding="utf-8").split("\n# -- Beyond the QKD modules")[0]
    with pytest.raises(TopologyError) as info:
        parse_topology(text + BROKEN_ADDITIONS, "broken.yaml")
    problems = info.value.problems
    expected = [
        "switches[0] (sw-quevedo).ports[1] (l9x).link: no link '99'",
        "switches[0] (sw-quevedo).ports[3] (idq).module: idq-norte-l4 is not at Quevedo",
        "switches[0] (sw-quevedo).cross_connects.l3: no port named 'nowhere'",
        "switches[0] (sw-quevedo).cross_connects.l8: port 'l3' is joined twice",
        "key_managers[0] (kme-quevedo).peers[0]: no key manager at 'Norte'",
        "key_managers: site Norte has QKD modules but no key manager",
        "encryptors[0] (enc-x).key_manager: no key manager named 'kme-nowhere'",
        "instruments[0] (osa-x).site: link 4 runs Quevedo-Norte, not from Quijote",
        "channels[14] (link 3+4): the path crosses Quevedo, where no switch has ports for "
        "links 3 and 4",
    ]
    for line in expected:
        assert line in problems, (line, problems)
    bad_port = text + "switches:\n  - {name: s, site: Norte, ports: [{name: a}, {name: b}]}\n"
    with pytest.raises(TopologyError) as info:
        parse_topology(bad_port, "broken.yaml")
    assert "switches[0].ports[0]: a port joins either a link or a module: give exactly one" in (
        info.value.problems
    )


# ---- `sims up` and the control API, across processes ----------------------------------------


def test_fault_api_loss_on_link_4_lowers_the_polled_key_rate_and_raises_qber(tmp_path):
    config = tmp_path / "sims.yaml"
    with SimsProcess(config, ["--only", "idq-quevedo-l4", "--only", "idq-norte-l4"]):
        assert json.loads(config.with_suffix(".twin.json").read_text())["control_url"]
        (before,) = poll_links(config, "idq-quevedo-l4")
        assert before["fields"]["key_generating"], before
        added = json.loads(fault(config, "--link", "4", "--add-loss", "6").stdout)
        assert added == {"link": "4", "distance_km": 12.4, "loss_db": 6.0, "kind": "bend"}
        (after,) = poll_links(config, "idq-quevedo-l4")
        skr = [p["fields"]["secret_key_rate_bps"] for p in (before, after)]
        qber = [p["fields"]["qber"] for p in (before, after)]
        assert skr[1] < 0.5 * skr[0], skr
        assert qber[1] > qber[0] + 0.005, qber
        state = json.loads(fault(config, "--state").stdout)
        assert state["fibre_faults"]["4"][0]["loss_db"] == 6.0
        fault(config, "--link", "4", "--add-loss", "15", "--at-km", "20", "--kind", "break")
        for end in ("idq-quevedo-l4", "idq-norte-l4"):
            (broken,) = poll_links(config, end)
            assert broken["fields"]["secret_key_rate_bps"] == 0, broken
            assert not broken["fields"]["key_generating"], broken
        fault(config, "--clear")
        (repaired,) = poll_links(config, "idq-quevedo-l4")
        assert repaired["fields"]["secret_key_rate_bps"] > 0.5 * skr[0]
        fault(config, "--device", "idq-norte-l4", "--down")
        silent = qkdtel("poll", "-c", str(config), "idq-norte-l4", check=False)
        assert silent.returncode != 0 and "timeout" in silent.stderr, silent.stderr
        fault(config, "--device", "idq-norte-l4", "--up")
        assert poll_links(config, "idq-norte-l4")


def test_sims_fault_refuses_bad_requests_in_one_line(tmp_path):
    config = tmp_path / "sims.yaml"
    with SimsProcess(config, ["--only", "ait-moncloa"]):
        for args, message in (
            (["--link", "44", "--add-loss", "3"], "no link '44' in madqci-twin"),
            (["--add-loss", "3"], "--add-loss needs --link"),
            (["--link", "4", "--add-loss", "3", "--at-km", "99"], "link 4 is 24.8 km long"),
            (["--consumption", "Quevedo:Moncloa=5"], "no quantum channel joins Quevedo and"),
        ):
            result = fault(config, *args, check=False)
            assert result.returncode == 2, (args, result.stderr)
            assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    result = fault(tmp_path / "none.yaml", "--state", check=False)
    assert result.returncode == 2 and "none.twin.json: no control URL there" in result.stderr


def test_a_switch_move_over_netconf_lights_path_3_plus_4_and_darkens_the_direct_ones(tmp_path):
    config = tmp_path / "sims.yaml"
    modules = ["hwdu-quijote-l3", "hwdu-quevedo-l3", "hwdu-quevedo-l4", "hwdu-norte-l4"]
    args = ["--families", "snmp,switches", "--speed", "60"]
    with SimsProcess(config, [*args, *(a for m in modules for a in ("--only", m))]) as sims:
        assert {d["driver"] for d in sims.config["devices"]} == {"qkd_snmp", "netconf_switch"}
        norte = poll_links(config, "hwdu-norte-l4")
        assert rate(norte, "3+4", "rx") == 0.0  # the path is not made at first
        assert rate(norte, "4", "rx") > 0 and rate(norte, "4", "tx") > 0
        assert rate(poll_links(config, "hwdu-quevedo-l3"), "3", "rx") > 0
        # Quevedo: unplug link 4's module from link 4, then send link 3's light onto link 4
        # (ports: ingress l3 1, l4 2, module-l3 3, module-l4 4; egress +4)
        qkdtel("switch", "disconnect", "-c", str(config), "sw-quevedo", "4")
        moved = qkdtel("switch", "move", "-c", str(config), "sw-quevedo", "1", "6")
        assert "1 -> 6" in moved.stdout + moved.stderr, moved.stdout
        norte = poll_links(config, "hwdu-norte-l4")
        assert rate(norte, "3+4", "rx") > 0
        assert rate(norte, "4", "rx") == 0.0  # Quevedo's link-4 module no longer on the fibre
        assert rate(norte, "4", "tx") > 0  # Norte -> Quevedo still arrives (4 -> module)
        quevedo3 = poll_links(config, "hwdu-quevedo-l3")
        assert rate(quevedo3, "3", "rx") == 0.0  # link 3's light now leaves on link 4
        (cv_rx,) = [
            p for p in norte if p["tags"]["link"] == "4" and p["tags"]["direction"] == "rx"
        ][:1]
        assert cv_rx["fields"]["snr_db"] == -30.0 and not cv_rx["fields"]["key_generating"]


def test_sims_up_writes_one_config_of_every_family_that_qkdtel_check_accepts(tmp_path):
    config = tmp_path / "sims.yaml"
    # every family in one process: slow to start on a busy machine (28 agents' MIBs, a PKI)
    with SimsProcess(config, ["--speed", "10"], start_timeout=180) as sims:
        drivers = {d["driver"] for d in sims.config["devices"]}
        assert drivers == {
            "qkd_snmp",
            "netconf_switch",
            "etsi014",
            "qrng",
            "encryptor_snmp",
            "osa",
            "otdr",
            "powermeter",
        }
        names = set(sims.devices)
        assert {"sw-quevedo", "kme-quevedo", "qrng-quevedo", "osa-quevedo-l4"} <= names
        (listener,) = sims.config["listeners"]
        assert listener["type"] == "netconf_notifications"
        assert [s["device"] for s in listener["switches"]] == [
            "sw-quijote",
            "sw-quevedo",
            "sw-norte",
        ]
        checked = qkdtel("check", "-c", str(config))
        assert f"{len(names)} device(s) enabled" in checked.stdout + checked.stderr
        shown = qkdtel("switch", "show", "-c", str(config), "sw-norte")
        assert "l4-in" in shown.stdout and "hwdu-norte-l4-out" in shown.stdout, shown.stdout
        fault(config, "--device", "sw-norte", "--down")
        down = qkdtel("switch", "show", "-c", str(config), "sw-norte", check=False)
        assert down.returncode != 0, down.stdout
        fault(config, "--device", "sw-norte", "--up")
        assert qkdtel("switch", "show", "-c", str(config), "sw-norte").returncode == 0


def test_the_sdqkd_family_reads_the_same_channels_as_the_modules(tmp_path):
    config = tmp_path / "sims.yaml"
    with SimsProcess(config, ["--families", "sdqkd"]) as sims:
        assert {d["driver"] for d in sims.config["devices"]} == {"sdqkd_node"}
        assert "listeners" not in sims.config  # no switch: nothing to subscribe to

        def idq4() -> dict:
            (row,) = [
                p
                for p in poll_links(config, "sdqkd-quevedo")
                if p["tags"]["link"] == "4" and p["tags"]["band"] == "O"
            ]
            return row

        before = idq4()["fields"]["secret_key_rate_bps"]
        fault(config, "--link", "4", "--add-loss", "6")
        after = idq4()["fields"]
        assert after["secret_key_rate_bps"] < 0.5 * before, (before, after)

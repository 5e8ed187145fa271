"""The hardware-in-the-loop mechanism, tested end to end: pytest runs in a subprocess with
`--hil lab.yaml`, where the lab's "real" modules are simulators on loopback that only this
test knows about, and the report must show the driver tests ran against them (and failed when
the inventory points at nothing)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures_hil import InventoryError, load_inventory
from tests.fixtures_snmp import free_udp_port

REPO = Path(__file__).resolve().parents[1]
DRIVER_TESTS = REPO / "tests" / "test_qkd_snmp_driver.py"
TARGET_TESTS = ("test_poll_is_normalised_and_in_range", "test_one_engine_and_socket_for_every_poll")


def run_pytest(args: list[str], cwd: Path, report: Path) -> dict[str, str]:
    """Run pytest in a subprocess; return {test id: passed|failed|skipped: reason}."""
    subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args,
         f"--junitxml={report}"],
        cwd=cwd, capture_output=True, text=True, timeout=240,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )  # fmt: skip
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        skipped = case.find("skipped")
        if skipped is not None:
            outcomes[name] = f"skipped: {skipped.get('message', '')}"
        elif case.find("failure") is not None or case.find("error") is not None:
            outcomes[name] = "failed"
        else:
            outcomes[name] = "passed"
    return outcomes


def lab_device(name: str, address: str, sim_device: dict[str, Any], **extra: Any) -> dict:
    device = {k: v for k, v in sim_device.items() if k not in ("name", "address")}
    return {"name": name, "address": address, **device, **extra}


def write_inventory(path: Path, devices: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"lab": "loopback bench", "devices": devices}))
    return path


def test_driver_tests_run_against_the_inventory_devices(single_agent, tmp_path):
    idq = single_agent("cerberis3", version="3")
    hwdu = single_agent("hwdu_cv")
    inventory = write_inventory(
        tmp_path / "lab.yaml",
        [
            lab_device("bench-idq", idq.address, idq.device),
            lab_device("bench-hwdu", hwdu.address, hwdu.device, safe_to_change=True),
            lab_device("bench-spare", hwdu.address, hwdu.device, enabled=False),
        ],
    )
    outcomes = run_pytest(
        [str(DRIVER_TESTS), "-m", "hil", "--hil", str(inventory)], REPO, tmp_path / "r.xml"
    )
    expected = {f"{t}[hil-{d}]" for t in TARGET_TESTS for d in ("bench-idq", "bench-hwdu")}
    assert outcomes == dict.fromkeys(expected, "passed")

    # Negative control: the same run against an inventory that points at nothing fails, so the
    # tests above really talked to the inventory's addresses.
    nowhere = f"127.0.0.1:{free_udp_port()}"
    dead = write_inventory(tmp_path / "dead.yaml", [lab_device("ghost", nowhere, idq.device)])
    outcomes = run_pytest(
        [str(DRIVER_TESTS), "-m", "hil", "--hil", str(dead)], REPO, tmp_path / "d.xml"
    )
    assert outcomes == {f"{t}[hil-ghost]": "failed" for t in TARGET_TESTS}


def test_changes_state_runs_only_on_devices_marked_safe(single_agent, tmp_path):
    sim = single_agent("toshiba")
    inventory = write_inventory(
        tmp_path / "lab.yaml",
        [
            lab_device("production-tsb", sim.address, sim.device),
            lab_device("spare-tsb", sim.address, sim.device, safe_to_change=True),
        ],
    )
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            pytest_plugins = ["tests.fixtures_snmp", "tests.fixtures_hil"]

            def pytest_addoption(parser):
                parser.addoption("--hil", default=None)

            def pytest_configure(config):
                config.addinivalue_line("markers", "hil: lab device")
                config.addinivalue_line("markers", "changes_state: alters the device")
            """
        )
    )
    (tmp_path / "test_probe.py").write_text(
        textwrap.dedent(
            """
            import pytest

            def test_reads(qkd_target):
                assert qkd_target.hardware

            @pytest.mark.changes_state
            def test_changes(qkd_target):
                assert qkd_target.safe_to_change
            """
        )
    )
    outcomes = run_pytest(["--hil", str(inventory)], tmp_path, tmp_path / "r.xml")
    assert outcomes == {
        "test_reads[hil-production-tsb]": "passed",
        "test_reads[hil-spare-tsb]": "passed",
        "test_changes[hil-production-tsb]": "skipped: production-tsb is not marked "
        "safe_to_change in the lab inventory",
        "test_changes[hil-spare-tsb]": "passed",
    }


def test_invalid_inventory_lists_every_problem_by_path_without_secrets(tmp_path):
    path = write_inventory(
        tmp_path / "lab.yaml",
        [
            {"name": "a", "driver": "qkd_snmp", "address": "10.0.0.1", "profile": "toshiba",
             "snmp": {"version": "3", "user": "u", "auth_protocol": "sha", "auth_key": "s3cr"}},
            {"name": "b", "driver": "no_such_driver"},
            {"name": "c", "driver": "qkd_snmp", "profile": "toshiba", "safe_to_change": "maybe"},
        ],
    )  # fmt: skip
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert "devices[2].safe_to_change: " in message
    path = write_inventory(path, yaml.safe_load(path.read_text())["devices"][:2])
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    message = str(info.value)
    assert "devices[0].snmp.auth_key: Value error, keys must be at least 8" in message
    assert "devices[1].driver: no driver named 'no_such_driver'" in message
    assert "s3cr" not in message

"""The layering and a production install: every module has its place in the import-linter
contracts (which ./run-tests checks); the simulators' and lab plots' needs are an extra
(`sims`), and `qkdtel run` loads neither a simulator module nor those packages."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import requires
from pathlib import Path

import yaml


def requirement_names(extra: str | None) -> set[str]:
    """Names of qkdtel's installed requirements: the core ones, or those of `extra` only."""
    names = set()
    for requirement in requires("qkdtel") or []:
        marker = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if (marker.group(1) if marker else None) == extra:
            names.add(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower())
    return names


def test_core_requirements_leave_the_sims_extra_out():
    core, sims = requirement_names(None), requirement_names("sims")
    assert "matplotlib" in sims
    assert not core & sims, core & sims
    assert {"pysnmp", "pyvisa", "apscheduler", "pydantic", "rich"} <= core
    assert "qkdtel" in requirement_names("test")  # the tests install qkdtel[sims]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_qkdtel_run_loads_no_simulator_module(tmp_path):
    config = {
        "collector": {"spool_dir": str(tmp_path / "spool")},
        "sinks": [{"type": "file", "path": str(tmp_path / "lp")}],
        "listeners": [{"type": "snmp_traps", "listen": f"127.0.0.1:{free_udp_port()}"}],
        "devices": [
            {
                "name": "quevedo",
                "driver": "qkd_snmp",
                "address": "127.0.0.1:9",
                "profile": "toshiba",
            }
        ],
    }
    path = tmp_path / "qkdtel.yaml"
    path.write_text(yaml.safe_dump(config))
    # `qkdtel run` itself, then every installed driver and listener loaded in the same process.
    child = textwrap.dedent(
        """
        import json, sys
        from qkdtel.cli import main
        from qkdtel.plugins import (
            driver_entry_points, listener_entry_points, load_driver, load_listener)
        code = main(["run", "-c", sys.argv[1], "--duration", "1"])
        for name in driver_entry_points():
            load_driver(name)
        for name in listener_entry_points():
            load_listener(name)
        print(json.dumps([code, sorted(sys.modules)]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    code, modules = json.loads(result.stdout.splitlines()[-1])
    assert code == 0
    assert "qkdtel.daemon" in modules and "qkdtel.drivers.qkd_snmp.traps" in modules
    unwanted = [m for m in modules if m.startswith(("qkdtel.sims", "matplotlib"))]
    assert unwanted == []


PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def contracts() -> list[dict]:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]


def layers() -> list[set[str]]:
    """The layers contract's modules of the `qkdtel` container, top layer first."""
    (contract,) = [c for c in contracts() if c["type"] == "layers"]
    return [{name.strip() for name in re.split(r"[:|]", layer)} for layer in contract["layers"]]


def container_modules() -> set[str]:
    """Every module and subpackage directly in `qkdtel`, wherever package-dir puts it."""
    package_dir = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    collector = PYPROJECT.parent / package_dir["qkdtel"]
    names = {p.stem for p in collector.glob("*.py")} - {"__init__"}
    names |= {p.name for p in collector.iterdir() if (p / "__init__.py").is_file()}
    return names | {name.split(".")[1] for name in package_dir if name.count(".") == 1}


def test_every_module_has_its_place_in_the_layers():
    """A module the layers leave out would be checked by nothing: each new one needs a place."""
    assert set().union(*layers()) == container_modules()


def test_forbidden_contracts_name_every_module_of_the_layers_above():
    order = layers()
    for contract in (c for c in contracts() if c["type"] == "forbidden"):
        (source,) = contract["source_modules"]
        level = next(i for i, layer in enumerate(order) if source.split(".")[1] in layer)
        above = {f"qkdtel.{name}" for layer in order[:level] for name in layer}
        assert above <= set(contract["forbidden_modules"]), (contract["name"], above)


def test_lab_plots_without_the_sims_extra_are_a_clear_usage_error(tmp_path):
    # matplotlib is installed here (the tests install the extra): a finder refusing it stands
    # in for a production install, which a test cannot make.
    child = textwrap.dedent(
        """
        import sys

        class NoMatplotlib:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "matplotlib":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoMatplotlib())
        from qkdtel.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    plot = ["--plot", str(tmp_path / "plot.png")]
    for command in (["osa", "sweep"], ["otdr", "acquire"]):
        result = subprocess.run(
            [sys.executable, "-c", child, *command, "TCPIP::127.0.0.1::9::SOCKET", *plot],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "--plot needs matplotlib" in result.stderr and "qkdtel[sims]" in result.stderr
        assert "Traceback" not in result.stderr

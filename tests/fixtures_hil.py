"""Hardware in the loop: the same driver tests against simulators or against a lab's modules.

`pytest --hil lab.yaml` swaps the targets of every test that takes the `qkd_target` fixture
from the simulators to the `qkd_snmp` devices of a lab inventory (docs/hil.md). The inventory
is a collector-style `devices:` list plus, per device, `safe_to_change` (default false): a test
marked `changes_state` runs on a real device only when that device says it may.

Tests parametrised over real devices carry the `hil` marker, so `pytest --hil lab.yaml -m hil`
runs exactly the hardware tests and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError

from qkdtel.config import DeviceConfig, format_loc
from qkdtel.drivers.qkd_snmp import QkdSnmpDriver
from qkdtel.drivers.qkd_snmp.options import QkdSnmpOptions
from qkdtel.plugins import DriverNotFound, load_driver
from qkdtel.sdk import Model

SIM_TARGETS = [(p, v) for p in ("cerberis3", "toshiba", "hwdu_cv", "ait_cv") for v in ("2c", "3")]
"""Without --hil, `qkd_target` runs per profile and SNMP version on a representative simulated
module of that family (SNMPv3 is authPriv, SHA-256 + AES-128)."""

_INVENTORY = pytest.StashKey["LabInventory | None"]()


class LabDevice(DeviceConfig):
    """One bench device: exactly a collector `devices:` entry, plus `safe_to_change`."""

    safe_to_change: bool = Field(
        False, description="tests marked changes_state may alter this device's state"
    )


class LabInventory(Model):
    """A lab inventory file (`--hil lab.yaml`)."""

    lab: str = Field("", description="name of the bench, shown in test reports")
    devices: list[LabDevice] = Field(default_factory=list)


class InventoryError(Exception):
    """The inventory is invalid; lists every problem with its path, never a value."""


@dataclass(frozen=True)
class Inventory:
    """A validated inventory: each device with its driver options validated by its driver."""

    lab: str
    devices: list[tuple[LabDevice, BaseModel]]


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate a lab inventory; `InventoryError` lists all problems at once."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc}") from None
    problems: list[str] = []
    try:
        inventory = LabInventory.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{format_loc(e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        raise InventoryError(f"{path}:\n  " + "\n  ".join(problems)) from None
    devices = []
    for index, device in enumerate(inventory.devices):
        try:
            options_model = load_driver(device.driver).options_model
            devices.append((device, options_model.model_validate(device.model_extra or {})))
        except DriverNotFound as exc:
            problems.append(f"devices[{index}].driver: {exc}")
        except ValidationError as exc:
            problems += [
                f"{format_loc(('devices', index, *e['loc']))}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            ]
    if problems:
        raise InventoryError(f"{path}:\n  " + "\n  ".join(problems))
    return Inventory(inventory.lab, devices)


@dataclass(frozen=True)
class QkdTarget:
    """A QKD module a test polls: a simulator or a lab device."""

    name: str
    options: QkdSnmpOptions
    tags: dict[str, str] = field(default_factory=dict)
    hardware: bool = False
    safe_to_change: bool = True  # simulators may always be changed

    def driver(self, timeout: float = 10.0) -> QkdSnmpDriver:
        """A fresh driver for this target (the caller closes it with `aclose`)."""
        return QkdSnmpDriver(self.name, self.options, timeout)


def hil_inventory(config: pytest.Config) -> Inventory | None:
    """The `--hil` inventory (loaded once per session), or None when running on simulators."""
    if _INVENTORY not in config.stash:
        option = config.getoption("--hil")
        config.stash[_INVENTORY] = load_inventory(option) if option else None
    return config.stash[_INVENTORY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise `qkd_target` over the simulated profiles, or over the lab's SNMP modules."""
    if "qkd_target" not in metafunc.fixturenames:
        return
    inventory = hil_inventory(metafunc.config)
    if inventory is None:
        params = [pytest.param(("sim", t), id=f"sim-{t[0]}-v{t[1]}") for t in SIM_TARGETS]
    else:
        params = [
            pytest.param(("hil", device.name), id=f"hil-{device.name}", marks=pytest.mark.hil)
            for device, _ in inventory.devices
            if device.driver == "qkd_snmp" and device.enabled
        ]
    metafunc.parametrize("qkd_target", params, indirect=True)


@pytest.fixture
def qkd_target(request: pytest.FixtureRequest) -> QkdTarget:
    """The module under test: a simulator of one profile, or one lab device under --hil."""
    source, key = request.param
    if source == "hil":
        inventory = hil_inventory(request.config)
        assert inventory is not None
        device, options = next((d, o) for d, o in inventory.devices if d.name == key)
        target = QkdTarget(
            device.name,
            options,  # type: ignore[arg-type]
            dict(device.tags),
            hardware=True,
            safe_to_change=device.safe_to_change,
        )
    else:
        target = simulated_target(request.getfixturevalue("snmp_sims"), key)
    if request.node.get_closest_marker("changes_state") and not target.safe_to_change:
        pytest.skip(f"{target.name} is not marked safe_to_change in the lab inventory")
    return target


def driver_options(device: dict[str, Any]) -> QkdSnmpOptions:
    """The driver's options out of a collector `devices:` entry."""
    return QkdSnmpOptions.model_validate(
        {k: v for k, v in device.items() if k in QkdSnmpOptions.model_fields}
    )


def simulated_target(sims: Any, target: tuple[str, str]) -> QkdTarget:
    """The representative simulated module of a profile, polled with one SNMP version."""
    from tests.fixtures_snmp import REPRESENTATIVE

    profile, version = target
    path = sims.config_path_v3 if version == "3" else sims.config_path
    devices = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["devices"]
    device = next(d for d in devices if d["name"] == REPRESENTATIVE[profile])
    return QkdTarget(device["name"], driver_options(device), dict(device.get("tags", {})))

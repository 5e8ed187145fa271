"""Shared pytest set-up. Each area keeps its fixtures in its own `fixtures_*.py` plugin module."""

import pytest

pytest_plugins = [
    "tests.fixtures_influxdb",
    "tests.fixtures_snmp",
    "tests.fixtures_hil",
    "tests.fixtures_plugin",
    "tests.fixtures_otdr",
    "tests.fixtures_scpi",
    "tests.fixtures_https",
    "tests.fixtures_netconf",
    "tests.fixtures_netconfd",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hil",
        metavar="LAB_YAML",
        default=None,
        help="run the driver tests against the real devices of this lab inventory "
        "instead of the simulators (read-only unless a device is marked safe_to_change)",
    )

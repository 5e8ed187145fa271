"""A simulated optical switch (sims/netconf) on loopback, with a known_hosts file naming it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qkdtel.drivers.netconf_switch.options import SwitchOptions
from qkdtel.sims.netconf import NetconfSimServer, port_roles, site_switch
from qkdtel.sims.topology import load_topology

SIM_PASSWORD = "sim-Secret-7Q"


@dataclass
class SwitchSim:
    """The switch at Quevedo of the MadQCI twin, its server and a known_hosts file for it."""

    server: NetconfSimServer
    known_hosts: Path

    @property
    def pairs(self) -> dict[int, int]:
        """The switch's running cross-connects, read from the simulator itself."""
        return dict(self.server.model.running.pairs)

    def options(self, **overrides: Any) -> dict[str, Any]:
        """The device options reaching this switch (password inline)."""
        return {
            "address": self.server.host,
            "port": self.server.port,
            "username": "admin",
            "password": SIM_PASSWORD,
            "known_hosts": str(self.known_hosts),
            "reconnect_backoff": 0.2,
            "ports": port_roles(self.server.model),
            **overrides,
        }

    def switch_options(self, **overrides: Any) -> SwitchOptions:
        return SwitchOptions.model_validate(self.options(**overrides))

    def device(self, name: str = "sw-quevedo", **overrides: Any) -> dict[str, Any]:
        """A `devices:` entry polling this switch."""
        return {
            "name": name,
            "driver": "netconf_switch",
            "interval": 0.5,
            "timeout": 3,
            "tags": {"node": "Quevedo", "domain": "RM"},
            **self.options(**overrides),
        }


@pytest.fixture
def switch_sim(tmp_path: Path) -> Iterator[SwitchSim]:
    model = site_switch(load_topology(), "Quevedo")
    server = NetconfSimServer(model, password=SIM_PASSWORD).start()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    try:
        yield SwitchSim(server, known_hosts)
    finally:
        server.stop()

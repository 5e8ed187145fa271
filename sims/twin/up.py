"""`qkdtel sims up`: the whole twin in one process, around one `TwinModel`.

Families (`--families` picks some; default: all but sdqkd; `--only` alone means the SNMP
family only, the old fast behaviour):

- snmp: an SNMP agent per QKD module (sims/snmp), reporting the model's channels;
- switches: a NETCONF/SSH server per optical switch (sims/twin/netconf.py), its commits
  going to the model;
- keys: key managers, QRNG and encryptors (sims/twin/keys.py, `start_key_sims`);
- optics: OSAs, OTDRs and power meters (sims/twin/optics.py, `start_optical_sims`);
- sdqkd: an SD-QKD node per site over NETCONF (ETSI GS QKD 015 model) reading the same channels.
  Not started unless named: its `qkd_link` points repeat the modules' own under other device
  names, which sums over a network would count twice.

Beside them the control API (sims/twin/control.py) serves the model. Once all listen, ONE
collector configuration polling every device is written (`--config-out`), with the switches'
known_hosts and password files beside it, the URL of the control API in `<config>.twin.json`,
and the other families' files (certificates, pty links, OTDR baselines) under `<config>.twin/`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qkdtel.sims import collector_config
from qkdtel.sims.snmp.network import SimNetwork
from qkdtel.sims.twin.control import ControlServer, control_file
from qkdtel.sims.twin.keys import KeySims, start_key_sims
from qkdtel.sims.twin.model import TwinModel
from qkdtel.sims.twin.netconf import NetconfSims
from qkdtel.sims.twin.optics import OpticalSims, start_optical_sims

FAMILIES = ("snmp", "switches", "keys", "optics", "sdqkd")
DEFAULT_FAMILIES = FAMILIES[:4]


def families_wanted(families: Sequence[str] | None, only: Sequence[str] | None) -> tuple[str, ...]:
    """The families to start: those named, else SNMP only when modules are picked, else the
    default ones."""
    if families:
        return tuple(f for f in FAMILIES if f in families)
    return ("snmp",) if only else DEFAULT_FAMILIES


class TwinSims:
    """Everything `sims up` runs; `start()` on an event loop (the SNMP agents live there)."""

    def __init__(
        self,
        model: TwinModel,
        network: SimNetwork,
        *,
        families: Sequence[str] = DEFAULT_FAMILIES,
        workdir: Path | None = None,
        trap_target: tuple[str, int] | None = None,
        trap_version: str = "2c",
    ):
        self.model = model
        self.network = network
        self.families = tuple(families)
        self.host = network.host
        self.trap_target = trap_target
        self.trap_version = trap_version
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="qkdtel-twin-"))
        self.netconf: NetconfSims | None = None
        self.keys: KeySims | None = None
        self.optics: OpticalSims | None = None
        self.control: ControlServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Start every family wanted and the control API; on a failure, stop what started."""
        self._loop = asyncio.get_running_loop()
        try:
            if "snmp" in self.families:
                await self.network.start()
                self.model.subscribe(self._follow_devices)
            if "switches" in self.families or "sdqkd" in self.families:
                self.netconf = NetconfSims(
                    self.model,
                    self.host,
                    switches="switches" in self.families,
                    sdqkd="sdqkd" in self.families,
                )
            if "keys" in self.families:
                self.keys = start_key_sims(
                    self.model,
                    workdir=self.workdir / "keys",
                    host=self.host,
                    trap_target=self.trap_target,
                    trap_version=self.trap_version,
                )
            if "optics" in self.families:
                self.optics = start_optical_sims(
                    self.model, workdir=self.workdir / "optics", host=self.host
                )
            self.control = ControlServer(self.model, self.host)
        except BaseException:
            await self.stop()
            raise

    def _follow_devices(self, what: str) -> None:
        """A QKD module taken down through the model stops answering (on the agents' loop)."""
        if what != "devices" or self._loop is None:
            return
        for name, agent in self.network.agents.items():
            up = self.model.device_up(name)
            self._loop.call_soon_threadsafe(setattr, agent, "unresponsive", not up)

    def document(self, config_out: Path, *, v3: bool, interval: float) -> dict[str, Any]:
        """The collector configuration polling everything started (files beside `config_out`)."""
        agents = self.network.info() if "snmp" in self.families else []
        more: list[dict[str, Any]] = []
        listeners: list[dict[str, Any]] = []
        if self.netconf is not None:
            netconf = self.netconf.devices(config_out, interval)
            more += netconf
            switches = [d for d in netconf if d["driver"] == "netconf_switch"]
            if switches:
                listeners.append(collector_config.notifications_listener(switches))
        if self.keys is not None:
            more += self.keys.devices(interval=interval, v3=v3)
        if self.optics is not None:
            more += self.optics.devices()
        return collector_config.render(
            agents,
            v3=v3,
            trap_target=self.trap_target,
            trap_version=self.trap_version,
            interval=interval,
            more_devices=more,
            listeners=listeners,
        )

    def write_control_file(self, config_out: Path) -> Path:
        """`<config>.twin.json`: where the control API listens (for `qkdtel sims fault`)."""
        assert self.control is not None
        path = control_file(config_out)
        path.write_text(json.dumps({"control_url": self.control.url}, indent=1) + "\n")
        return path

    async def stop(self) -> None:
        """Stop everything started, the control API first (no change arrives mid-stop)."""
        for part in (self.control, self.optics, self.keys, self.netconf):
            if part is not None:
                part.stop()
        self.control = self.optics = self.keys = self.netconf = None
        self.model.unsubscribe(self._follow_devices)
        await self.network.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

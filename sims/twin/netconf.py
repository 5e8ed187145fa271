"""The twin's NETCONF/SSH devices: a server for each optical switch of the topology, wired to
the model both ways, and (family `sdqkd`) an SD-QKD node per site reading the model's channels.

Each topology port becomes an ingress port (1..N, label `<port>-in`) and an egress port
(N+1..2N, `<port>-out`), all quantum (CV). Every map the switch makes running (a commit, a
rollback) goes to `TwinModel.set_cross_connects` by port name, so `qkdtel switch move` over
NETCONF decides which CV paths carry light. What the monitors read follows the model too: a
link port receives the CV pilot minus the link's loss now (faults included), and a switch taken
down through the model drops its sessions and every `get` after (SD-QKD nodes alike).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from qkdtel.sims.netconf.cli import USERNAME
from qkdtel.sims.netconf.sdqkd import NodeModel, collector_maps
from qkdtel.sims.netconf.server import NetconfSimServer
from qkdtel.sims.netconf.switch import QUANTUM_PILOT_DBM, Port, SwitchModel, port_roles
from qkdtel.sims.topology import Switch, SwitchPort
from qkdtel.sims.twin.model import TwinModel, both_ways


def _input_dbm(model: TwinModel, port: SwitchPort) -> float:
    """Light arriving at the port: a link's far-end pilot after the fibre, or the module's own."""
    if port.link is None:
        return QUANTUM_PILOT_DBM
    return QUANTUM_PILOT_DBM - model.link_loss_db(port.link)


def switch_model(model: TwinModel, switch: Switch) -> SwitchModel:
    """The NETCONF-side model of `switch`, reporting each running map to `model`."""
    count = len(switch.ports)
    ids = {p.name: k for k, p in enumerate(switch.ports, start=1)}
    names = {k: n for n, k in ids.items()} | {k + count: n for n, k in ids.items()}
    ingress = [
        Port(ids[p.name], "ingress", f"{p.name}-in", True, _input_dbm(model, p), p.link)
        for p in switch.ports
    ]
    egress = [
        Port(ids[p.name] + count, "egress", f"{p.name}-out", link=p.link) for p in switch.ports
    ]
    for port in ingress + egress:  # a module's own port ends a path (the budget guard)
        port.module = switch.ports[(port.port_id - 1) % count].module
    pairs = {ids[a]: ids[b] + count for a, b in both_ways(switch.cross_connects).items()}

    def committed(sim: SwitchModel) -> None:
        model.set_cross_connects(
            switch.name, {names[i]: names[e] for i, e in sim.running.pairs.items()}
        )

    return SwitchModel(switch.name, ingress + egress, pairs, model.seed, on_commit=committed)


class NetconfSims:
    """The topology's switches (and, with `sdqkd`, an SD-QKD node per site with QKD modules)
    served over NETCONF/SSH, one password for all (random)."""

    def __init__(
        self,
        model: TwinModel,
        host: str = "127.0.0.1",
        *,
        switches: bool = True,
        sdqkd: bool = False,
    ):
        self.model = model
        self.password = secrets.token_urlsafe(12)
        self.servers: dict[str, NetconfSimServer] = {}
        self._switches = {s.name: s for s in model.topology.switches} if switches else {}
        self._sites: dict[str, str] = {}
        try:
            for switch in self._switches.values():
                self._serve(switch_model(model, switch), switch.site, host)
            sites = dict.fromkeys(m.site for m in model.topology.modules) if sdqkd else {}
            for site in sites:
                node = NodeModel(model.topology, site, model.seed, model.clock, model.channels)
                self._serve(node, site, host)
        except BaseException:
            self.stop()
            raise
        model.subscribe(self._follow)

    def _serve(self, device: SwitchModel | NodeModel, site: str, host: str) -> None:
        server = NetconfSimServer(device, host=host, password=self.password)
        self.servers[device.name] = server.start()
        self._sites[device.name] = site

    def _follow(self, what: str) -> None:
        """Keep the monitors' input levels and the devices' availability with the model."""
        if what == "faults":
            for name, switch in self._switches.items():
                ports = self.servers[name].model.ports.values()
                for topo in switch.ports:
                    port = next(p for p in ports if p.label == f"{topo.name}-in")
                    port.input_dbm = _input_dbm(self.model, topo)
        elif what == "devices":
            for name, server in self.servers.items():
                up = self.model.device_up(name)
                if not up and server.faults.drop_on is None:
                    server.faults.drop_on = "get"
                    server.drop_sessions()
                elif up:
                    server.faults.drop_on = None

    def write_files(self, config_out: Path) -> tuple[Path, Path]:
        """The known_hosts and password files beside the collector config (as `sims switch`
        writes them): `<config>.known_hosts`, `<config>.password`."""
        known_hosts = config_out.with_suffix(".known_hosts")
        known_hosts.write_text("".join(s.known_hosts_line() for s in self.servers.values()))
        password_file = config_out.with_suffix(".password")
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        return known_hosts, password_file

    def devices(self, config_out: Path, interval: float = 10.0) -> list[dict[str, Any]]:
        """The collector's `netconf_switch` and `sdqkd_node` entries (writing the files they
        name)."""
        known_hosts, password_file = self.write_files(config_out)
        peers, links = collector_maps(self.model.topology)
        out = []
        for name, server in self.servers.items():
            site = self._sites[name]
            if name in self._switches:
                options = {"driver": "netconf_switch", "ports": port_roles(server.model)}
                options["switch_loss_db"] = self._loss(name)
            else:
                options = {"driver": "sdqkd_node", "peers": peers, "links": links}
            out.append(
                {
                    "name": name,
                    "driver": options.pop("driver"),
                    "interval": interval,
                    "timeout": 5.0,
                    "tags": {"node": site, "domain": self.model.topology.site(site).domain},
                    "address": server.host,
                    "port": server.port,
                    "username": USERNAME,
                    "password_file": str(password_file),
                    "known_hosts": str(known_hosts),
                    **options,
                }
            )
        return out

    def _loss(self, name: str) -> float:
        loss = self._switches[name].insertion_loss_db
        return self.model.topology.behaviour.switch_loss_db if loss is None else loss

    def stop(self) -> None:
        self.model.unsubscribe(self._follow)
        for server in self.servers.values():
            server.stop()

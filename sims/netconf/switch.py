"""The simulated fibre cross-connect switch: its datastores, edit-config semantics and optics.

Data follows drivers/netconf_switch/qkdtel-optical-switch.yang. The switch at a site of the
topology has, for every fibre link ending there, a quantum and a classical ingress port (the
light arriving over that link, after the site's demultiplexer) and the matching egress ports
(ingress 1..N, egress N+1..2N). What each ingress port receives follows the link: a launch
level minus the link's loss; what an egress port emits is what its connected ingress port
receives minus the switch's insertion loss, or the monitor's floor when nothing feeds it.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from qkdtel.sims.topology import Topology

NS = "urn:example:qkdtel:optical-switch"
Q = f"{{{NS}}}"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
OPERATION = f"{{{NC}}}operation"

FLOOR_DBM = -60.0
"""What a dark port's monitor reads (a typical tap photodiode's floor)."""
INSERTION_LOSS_DB = 0.5
"""Switch insertion loss: the topology's behaviour.switch_loss_db default (invented)."""
CLASSICAL_LAUNCH_DBM = 3.0
"""Several DWDM data channels at about 0 dBm each after the multiplexer (invented)."""
QUANTUM_PILOT_DBM = -35.0
"""What a monitor sees on a quantum port: CV systems send a classical pilot/reference tone
beside the quantum signal, whose own power is far below any monitor (level invented)."""
MANUFACTURER, MODEL = "qkdtel simulator", "OXC-16 all-optical switch (simulated)"


class RpcFault(Exception):
    """An rpc-error to send back (RFC 6241 section 4.3)."""

    def __init__(
        self,
        tag: str,
        message: str,
        path: str = "",
        error_type: str = "application",
        holder: int | None = None,
    ):
        super().__init__(message)
        self.tag, self.message, self.path, self.error_type = tag, message, path, error_type
        self.holder = holder
        """The session holding a lock (error-info session-id of lock-denied and in-use)."""

    def to_xml(self) -> etree._Element:
        error = etree.Element(f"{{{NC}}}rpc-error", nsmap={None: NC})
        for name, text in (
            ("error-type", self.error_type),
            ("error-tag", self.tag),
            ("error-severity", "error"),
            ("error-path", self.path),
            ("error-message", self.message),
        ):
            if text:
                etree.SubElement(error, f"{{{NC}}}{name}").text = text
        if self.holder is not None:
            box = etree.SubElement(error, f"{{{NC}}}error-info")
            etree.SubElement(box, f"{{{NC}}}session-id").text = str(self.holder)
        return error


@dataclass
class Port:
    """One port's configuration (label, admin state) and hardware facts."""

    port_id: int
    direction: str
    label: str = ""
    enabled: bool = True
    input_dbm: float | None = None
    """Light arriving at an ingress port from its fibre; None: dark."""
    link: str | None = None
    carries: str = "quantum"
    module: str | None = None
    """The QKD module whose own port this is (the twin's switches), else None."""


@dataclass
class Config:
    """One datastore's content: port settings and the cross-connect map."""

    labels: dict[int, str] = field(default_factory=dict)
    enabled: dict[int, bool] = field(default_factory=dict)
    pairs: dict[int, int] = field(default_factory=dict)
    """ingress -> egress"""


def pair_path(ingress: int, leaf: str = "") -> str:
    path = f"/qos:optical-switch/qos:cross-connects/qos:pair[qos:ingress='{ingress}']"
    return f"{path}/qos:{leaf}" if leaf else path


class SwitchModel:
    """Ports, the running and candidate datastores, and what the monitors read."""

    namespace = NS
    required_leaves = (f"{Q}egress",)

    def __init__(
        self,
        name: str,
        ports: list[Port],
        pairs: dict[int, int],
        seed: int = 0,
        on_commit: Callable[[SwitchModel], None] | None = None,
    ):
        self.name = name
        self.on_commit = on_commit
        """Hook: called with the switch after each new running map (commit, rollback), so a
        model of the network (the twin) follows what the switch does."""
        self.ports = {p.port_id: p for p in ports}
        self.running = Config(
            {p.port_id: p.label for p in ports}, {p.port_id: p.enabled for p in ports}, pairs
        )
        self.candidate = copy.deepcopy(self.running)
        self._random = random.Random(seed)

    @property
    def running(self) -> Config:
        return self._running

    @running.setter
    def running(self, config: Config) -> None:
        """The server replaces the running datastore at each commit and rollback: the one
        place the switch's map changes, hence the hook."""
        self._running = config
        if self.on_commit is not None:
            self.on_commit(self)

    # -- reading --------------------------------------------------------------------------

    def power_dbm(self, port_id: int) -> float:
        """What the port's monitor reads now (with a little monitor noise)."""
        port, run = self.ports[port_id], self.running
        level: float | None
        if not run.enabled[port_id]:
            level = None
        elif port.direction == "ingress":
            level = port.input_dbm
        else:
            feeder = next((i for i, e in run.pairs.items() if e == port_id), None)
            source = self.ports.get(feeder) if feeder is not None else None
            level = None
            if source is not None and run.enabled[source.port_id] and source.input_dbm is not None:
                level = source.input_dbm - INSERTION_LOSS_DB
        if level is None or level < FLOOR_DBM:
            return FLOOR_DBM
        return round(level + self._random.gauss(0, 0.02), 2)

    def config_xml(self, config: Config) -> etree._Element:
        """<optical-switch> with the configuration of `config` only (get-config)."""
        root = etree.Element(f"{Q}optical-switch", nsmap={None: NS})
        for port_id in sorted(self.ports):
            port = etree.SubElement(root, f"{Q}port")
            etree.SubElement(port, f"{Q}port-id").text = str(port_id)
            etree.SubElement(port, f"{Q}label").text = config.labels.get(port_id, "")
            state = "enabled" if config.enabled.get(port_id, True) else "disabled"
            etree.SubElement(port, f"{Q}admin-state").text = state
        connects = etree.SubElement(root, f"{Q}cross-connects")
        for ingress, egress in sorted(config.pairs.items()):
            pair = etree.SubElement(connects, f"{Q}pair")
            etree.SubElement(pair, f"{Q}ingress").text = str(ingress)
            etree.SubElement(pair, f"{Q}egress").text = str(egress)
        return root

    def state_xml(self) -> etree._Element:
        """<optical-switch> with configuration and state (get)."""
        root = self.config_xml(self.running)
        inventory = etree.Element(f"{Q}inventory")
        for name, text in (
            ("manufacturer", MANUFACTURER),
            ("model-name", MODEL),
            ("serial-number", f"SIM-{self.name.upper()}"),
            ("firmware-version", "1.0.0"),
            ("port-count", str(len(self.ports))),
        ):
            etree.SubElement(inventory, f"{Q}{name}").text = text
        root.insert(0, inventory)
        for port in root.iter(f"{Q}port"):
            port_id = int(port.findtext(f"{Q}port-id"))
            dbm = self.power_dbm(port_id)
            etree.SubElement(port, f"{Q}direction").text = self.ports[port_id].direction
            up = self.running.enabled[port_id] and dbm > FLOOR_DBM
            etree.SubElement(port, f"{Q}oper-state").text = "up" if up else "down"
            monitor = etree.SubElement(port, f"{Q}power-monitor")
            etree.SubElement(monitor, f"{Q}power").text = f"{dbm:.2f}"
        return root

    # -- editing --------------------------------------------------------------------------

    def edit(self, config: etree._Element, default_operation: str) -> None:
        """Apply an edit-config <config> to the candidate (all or nothing)."""
        work = copy.deepcopy(self.candidate)
        for top in config:
            if not isinstance(top.tag, str):
                continue
            if top.tag != f"{Q}optical-switch":
                raise RpcFault(
                    "unknown-namespace" if not top.tag.startswith(Q) else "unknown-element",
                    f"no such top-level node {top.tag}",
                    f"/{etree.QName(top).localname}",
                    "protocol",
                )
            self._edit_switch(work, top, top.get(OPERATION, default_operation))
        self.candidate = work

    def _edit_switch(self, work: Config, top: etree._Element, operation: str) -> None:
        for child in top:
            if not isinstance(child.tag, str):
                continue
            if child.tag == f"{Q}port":
                self._edit_port(work, child, child.get(OPERATION, operation))
            elif child.tag == f"{Q}cross-connects":
                op = child.get(OPERATION, operation)
                if op == "replace":
                    work.pairs = {}
                elif op in ("delete", "remove"):
                    work.pairs = {}
                    continue
                for pair in child:
                    if isinstance(pair.tag, str):
                        self._edit_pair(work, pair, pair.get(OPERATION, op))
            else:
                raise RpcFault(
                    "unknown-element",
                    f"no such node {etree.QName(child).localname} in optical-switch",
                    f"/qos:optical-switch/{etree.QName(child).localname}",
                    "protocol",
                )

    @staticmethod
    def _number(element: etree._Element | None, what: str, path: str) -> int:
        if element is None or not (element.text or "").strip():
            raise RpcFault("missing-element", f"{what} is missing", path, "protocol")
        try:
            return int(element.text.strip())
        except ValueError:
            raise RpcFault(
                "invalid-value", f"{what} {element.text!r} is not a port number", path
            ) from None

    def _edit_pair(self, work: Config, pair: etree._Element, operation: str) -> None:
        if pair.tag != f"{Q}pair":
            raise RpcFault("unknown-element", "cross-connects holds pair entries only", "")
        ingress = self._number(pair.find(f"{Q}ingress"), "ingress", pair_path(0))
        exists = ingress in work.pairs
        if operation in ("delete", "remove"):
            if operation == "delete" and not exists:
                raise RpcFault(
                    "data-missing", f"no cross-connect from {ingress}", pair_path(ingress)
                )
            work.pairs.pop(ingress, None)
            return
        if operation == "create" and exists:
            raise RpcFault("data-exists", f"ingress {ingress} is connected", pair_path(ingress))
        egress_element = pair.find(f"{Q}egress")
        if egress_element is None and exists and operation == "merge":
            return
        work.pairs[ingress] = self._number(egress_element, "egress", pair_path(ingress, "egress"))

    def _edit_port(self, work: Config, port: etree._Element, operation: str) -> None:
        port_id = self._number(port.find(f"{Q}port-id"), "port-id", "/qos:optical-switch/qos:port")
        path = f"/qos:optical-switch/qos:port[qos:port-id='{port_id}']"
        if port_id not in self.ports:
            raise RpcFault("invalid-value", f"the switch has no port {port_id}", path)
        if operation in ("delete", "remove", "create"):
            raise RpcFault("operation-not-supported", "ports are fixed hardware", path, "protocol")
        label = port.findtext(f"{Q}label")
        if label is not None:
            work.labels[port_id] = label
        state = port.findtext(f"{Q}admin-state")
        if state is not None:
            if state not in ("enabled", "disabled"):
                raise RpcFault("invalid-value", f"admin-state {state!r}", f"{path}/qos:admin-state")
            work.enabled[port_id] = state == "enabled"

    def validate(self, config: Config) -> None:
        """The model's constraints on `config` (leafrefs, directions, unique egress)."""
        feeding: dict[int, int] = {}
        for ingress, egress in sorted(config.pairs.items()):
            for leaf, port_id, direction in (
                ("ingress", ingress, "ingress"),
                ("egress", egress, "egress"),
            ):
                port = self.ports.get(port_id)
                if port is None:
                    raise RpcFault(
                        "invalid-value",
                        f"{leaf} {port_id}: the switch has no such port",
                        pair_path(ingress, leaf),
                    )
                if port.direction != direction:
                    raise RpcFault(
                        "invalid-value",
                        f"{leaf} {port_id} is an {port.direction} port",
                        pair_path(ingress, leaf),
                    )
            if egress in feeding:
                raise RpcFault(
                    "operation-failed",
                    f"egress {egress} is fed by ingress {feeding[egress]} and {ingress}",
                    pair_path(ingress, "egress"),
                )
            feeding[egress] = ingress


# -- a switch of the simulated network ----------------------------------------------------


def site_switch(topology: Topology, site: str, seed: int = 0) -> SwitchModel:
    """The switch at `site`: a quantum and a classical port pair per link ending there.

    Its initial map connects, for the first two links, quantum to quantum and classical to
    classical both ways (a pass-through like the switched 3+4 path at Quevedo); the ports of
    the other links are free.
    """
    links = [link for link in topology.links if site in (link.a, link.b)]
    if not links:
        raise ValueError(f"no link ends at {site!r}")
    ingress: list[Port] = []
    for link in links:
        for kind, launch in (("q", QUANTUM_PILOT_DBM), ("c", CLASSICAL_LAUNCH_DBM)):
            number = len(ingress) + 1
            carries = "quantum" if kind == "q" else "classical"
            label = f"l{link.id}-{kind}-in"
            ingress.append(
                Port(number, "ingress", label, True, launch - link.loss_db, link.id, carries)
            )
    count = len(ingress)
    egress = [
        Port(p.port_id + count, "egress", p.label[:-3] + "-out", link=p.link, carries=p.carries)
        for p in ingress
    ]
    pairs: dict[int, int] = {}
    if len(links) >= 2:
        # link A's ports are 1 (q) and 2 (c), link B's 3 and 4: A -> B and B -> A
        pairs = {1: 3 + count, 2: 4 + count, 3: 1 + count, 4: 2 + count}
    return SwitchModel(f"sw-{site.lower()}", ingress + egress, pairs, seed)


def port_roles(switch: SwitchModel, technology: str = "cv") -> dict[int, dict[str, str]]:
    """The `ports:` section of the switch's device in a collector configuration (guards)."""
    roles: dict[int, dict[str, str]] = {}
    for port in switch.ports.values():
        role = {"carries": port.carries}
        if port.link is not None:
            role["link"] = port.link
        if port.module is not None:
            role["module"] = port.module
        if port.carries == "quantum":
            role["technology"] = technology
        roles[port.port_id] = role
    return roles

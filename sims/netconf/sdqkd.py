"""A simulated SD-QKD node: the QKD modules of one site seen through the ETSI GS QKD 015 model.

Data follows drivers/sdqkd_node/qkdtel-etsi-qkd-015.yang. The figures come from the same
physics as the SNMP simulators (`sims.snmp.physics.ChannelModel`, built for the whole topology
by `build_channels`), so a link read over NETCONF and over SNMP tells one story. The node is
read-only here (the SDN controller's configuration side is not simulated): edit-config is
refused with operation-not-supported.

Identifiers are UUIDs as in GS QKD 015, derived from the topology (uuid5), so both ends of a
link name it alike and a collector configuration can map them to sites and link ids.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from lxml import etree

from qkdtel.drivers.optics import channel_nm
from qkdtel.sims.clock import AcceleratedClock, SimClock
from qkdtel.sims.netconf.switch import Config, RpcFault
from qkdtel.sims.snmp.network import build_channels
from qkdtel.sims.snmp.physics import ChannelModel, ModuleModel, Phase
from qkdtel.sims.topology import FAMILY, Channel, Topology

NS = "urn:example:qkdtel:etsi-qkd-015"
Q = f"{{{NS}}}"
MODEL_NUMBER = {
    "cerberis3": "ID Quantique Cerberis 3",
    "toshiba": "Toshiba QKD T12",
    "hwdu_cv": "Huawei CV-QKD prototype",
    "ait_cv": "AIT CV-QKD",
}
STATUS = {Phase.PRODUCING: "ACTIVE", Phase.MAINTENANCE: "OFF", Phase.STARTING: "PENDING"}
_IDS = uuid.UUID("6f1d0c4e-2b1a-5c8e-9d3f-0a7b6c5d4e3f")


def node_id(site: str) -> str:
    """The SD-QKD node of a site."""
    return str(uuid.uuid5(_IDS, f"node:{site}"))


def link_id(index: int) -> str:
    """The QKD link of the topology's channel number `index` (both ends share it)."""
    return str(uuid.uuid5(_IDS, f"link:{index}"))


def app_id(index: int) -> str:
    """The application drawing key from the channel number `index` (at its Alice end)."""
    return str(uuid.uuid5(_IDS, f"app:{index}"))


@dataclass(frozen=True)
class _End:
    """One link end at this node."""

    index: int
    channel: Channel
    module: str
    peer_module: str
    peer_site: str
    role: str


class NodeModel:
    """The SD-QKD node of `site`; `state_xml()` reads every channel at the clock's instant."""

    namespace = NS
    required_leaves = (f"{Q}qkdl_status",)

    def __init__(
        self,
        topology: Topology,
        site: str,
        seed: int = 0,
        clock: SimClock | None = None,
        channels: dict[int, ChannelModel] | None = None,
    ):
        """`channels`: the channel models to read (the twin's, shared with its SNMP agents);
        default: built here from the topology."""
        self.topology = topology
        self.site = site
        self.name = f"sdqkd-{site.lower()}"
        self.running = Config()
        self.candidate = Config()
        self.clock = clock or AcceleratedClock()
        self.started = dt.datetime.now(dt.UTC)
        if channels is None:
            modules = {m.name: ModuleModel(m.name, seed) for m in topology.modules}
            channels = build_channels(topology, seed, modules)
        self.channels: dict[int, ChannelModel] = channels
        self.modules = [m for m in topology.modules if m.site == site]
        if not self.modules:
            raise ValueError(f"no QKD module at {site!r}")
        self.ends = list(self._ends())
        self._consumed_base: dict[int, float] = {}

    def _ends(self):
        local = {m.name for m in self.modules}
        for index, channel in enumerate(self.topology.channels):
            for role, own, other in (
                ("TRANSMITTER", channel.alice, channel.bob),
                ("RECEIVER", channel.bob, channel.alice),
            ):
                if own in local:
                    peer_site = self.topology.module(other).site
                    yield _End(index, channel, own, other, peer_site, role)

    # -- the model's XML ------------------------------------------------------------------

    def state_xml(self) -> etree._Element:
        t = self.clock.now()
        node = etree.Element(f"{Q}qkd_node", nsmap={None: NS})
        _leaf(node, "qkdn_id", node_id(self.site))
        _leaf(node, "qkdn_location_id", self.site)
        _leaf(node, "qkdn_version", "qkdtel-sim 1.0")
        interfaces = etree.SubElement(node, f"{Q}qkd_interfaces")
        for module in self.modules:
            interface = etree.SubElement(interfaces, f"{Q}qkd_interface")
            _leaf(interface, "qkdi_id", module.name)
            _leaf(interface, "qkdi_model_number", MODEL_NUMBER[module.profile])
            _leaf(interface, "qkdi_type", FAMILY[module.profile].upper())
        links = etree.SubElement(node, f"{Q}qkd_links")
        apps = etree.SubElement(node, f"{Q}qkd_applications")
        for end in self.ends:
            reading = self.channels[end.index].reading(t)
            links.append(self._link(end, reading))
            if end.role == "TRANSMITTER":
                apps.append(self._app(end, reading))
        return node

    def _link(self, end: _End, reading) -> etree._Element:
        link = etree.Element(f"{Q}qkd_link")
        _leaf(link, "qkdl_id", link_id(end.index))
        _leaf(link, "qkdl_enable", "true")
        local = etree.SubElement(link, f"{Q}qkdl_local")
        _leaf(local, "qkdn_id", node_id(self.site))
        _leaf(local, "qkdi_id", end.module)
        remote = etree.SubElement(link, f"{Q}qkdl_remote")
        _leaf(remote, "qkdn_id", node_id(end.peer_site))
        _leaf(remote, "qkdi_id", end.peer_module)
        _leaf(link, "qkdl_type", "PHYS")
        _leaf(link, "qkdl_status", STATUS[reading.phase])
        _leaf(link, "phys_qkd_role", end.role)
        wavelength = 1310.0 if end.channel.band == "O" else channel_nm(end.channel.itu or 0)
        _leaf(link, "phys_wavelength", f"{wavelength:.3f}")
        _leaf(link, "phys_channel_att", f"{reading.loss_db:.2f}")
        if FAMILY[self.topology.module(end.module).profile] == "dv" and reading.producing:
            _leaf(link, "phys_qber", f"{reading.qber:.5f}")
        performance = etree.SubElement(link, f"{Q}qkdl_performance")
        _leaf(performance, "skr", str(round(reading.secret_key_rate_bps)))
        return link

    def _app(self, end: _End, reading) -> etree._Element:
        """The link's consumer (an encryptor), with what it drew from the key store so far:
        the secret bits distilled minus what the store gained since the node started."""
        drawn = reading.secret_bits_total - reading.store_bits
        base = self._consumed_base.setdefault(end.index, drawn)
        app = etree.Element(f"{Q}qkd_app")
        _leaf(app, "app_id", app_id(end.index))
        _leaf(app, "app_name", f"encryptor-l{end.channel.link}-{end.channel.itu or 'O'}")
        _leaf(app, "app_status", "ON" if reading.store_bits > 0 else "DISCONNECTED")
        _leaf(app, "backing_qkdl_id", link_id(end.index))
        statistics = etree.SubElement(etree.SubElement(app, f"{Q}app_statistics"), f"{Q}statistics")
        _leaf(statistics, "end_time", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        _leaf(statistics, "start_time", self.started.isoformat(timespec="seconds"))
        _leaf(statistics, "consumed_bits", str(max(0, round(drawn - base))))
        return app

    # -- datastores: read-only ------------------------------------------------------------

    def config_xml(self, config: Config) -> None:
        """No configuration is served (the node's data is all state here)."""
        return None

    def edit(self, config: etree._Element, default_operation: str) -> None:
        raise RpcFault(
            "operation-not-supported",
            "this SD-QKD node is configured by its SDN controller",
            "/qkdn:qkd_node",
            "protocol",
        )

    def validate(self, config: Config) -> None:
        """Nothing to validate: the candidate is always empty."""


def _leaf(parent: etree._Element, name: str, text: str) -> None:
    etree.SubElement(parent, f"{Q}{name}").text = text


def collector_maps(topology: Topology) -> tuple[dict[str, str], dict[str, str]]:
    """(node UUID -> site, link UUID -> network link id): the `peers` and `links` options of
    an `sdqkd_node` device, so its points carry the tags the SNMP driver's do."""
    peers = {node_id(site.name): site.name for site in topology.sites}
    links = {link_id(i): channel.link for i, channel in enumerate(topology.channels)}
    return peers, links

"""SD-QKD node driver: the ETSI GS QKD 015 model read over NETCONF, written as the same
`qkd_link` / `qkd_module` points the SNMP driver writes, plus `qkd_app` (per-application key
consumption, which 015 brings and SNMP does not).

Why it is built like this: one `get` with a subtree filter per poll, over the shared NETCONF
layer's session (kept across polls, re-opened with back-off); ncclient is blocking, hence a
`BlockingDriver`. The agent names nodes and links by UUID; the `peers` and `links` options
turn them into the `peer` and `link` tags dashboards already group by, so a dashboard cannot
tell which protocol fed it.
"""

from __future__ import annotations

from typing import ClassVar

from lxml import etree

from qkdtel.drivers.netconf import NetconfSession, find_container
from qkdtel.drivers.optics import channel_thz
from qkdtel.drivers.sdqkd_node.options import SdQkdOptions
from qkdtel.sdk import BlockingDriver, FieldValue, Malformed, Sample, now_ns

NS = "urn:example:qkdtel:etsi-qkd-015"
Q = f"{{{NS}}}"
RPC_SHARE = 0.8
"""Share of the device's timeout an RPC may take (the driver reports its own timeout first)."""
LINK_STATUS = {
    "ACTIVE": "active",
    "PASSIVE": "pending",
    "PENDING": "pending",
    "OFF": "off",
    "FAILURE": "failure",
}
"""015 link states onto `link_status` (PASSIVE, up but not generating, reads as pending)."""
VENDORS = {"ID Quantique": "idq", "Toshiba": "toshiba", "Huawei": "hwdu", "AIT": "ait"}
"""Model-number prefixes onto the `vendor` tag of the SNMP driver."""
C_BAND_NM = (1525.0, 1570.0)


def _text(element: etree._Element, path: str) -> str | None:
    text = element.findtext("/".join(f"{Q}{p}" for p in path.split("/")))
    return text.strip() if text is not None else None


def _required(element: etree._Element, path: str, where: str) -> str:
    text = _text(element, path)
    if not text:
        raise Malformed(f"{where}: {path} is missing")
    return text


def _number(text: str | None, where: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise Malformed(f"{where}: {text!r} is not a number") from None


def itu_channel(wavelength_nm: float) -> int | None:
    """The ITU 100 GHz channel of a C-band wavelength (None off the grid or outside)."""
    if not C_BAND_NM[0] <= wavelength_nm <= C_BAND_NM[1]:
        return None
    channel = round((299_792.458 / wavelength_nm - channel_thz(0)) * 10)
    return channel if abs(channel_thz(channel) - 299_792.458 / wavelength_nm) < 0.02 else None


def _link_key(sample: Sample) -> tuple[str, ...]:
    """What tells one link end of the node from another across polls."""
    return tuple(sample.tags.get(k, "") for k in ("module", "link", "channel", "direction"))


class SdQkdNodeDriver(BlockingDriver[SdQkdOptions]):
    """One SD-QKD node (ETSI GS QKD 015 agent) over NETCONF."""

    description: ClassVar[str] = "SD-QKD node over NETCONF (ETSI GS QKD 015 model)"

    def __init__(self, name: str, options: SdQkdOptions, timeout: float):
        super().__init__(name, options, timeout)
        self.session = NetconfSession(name, options, timeout * RPC_SHARE)
        self._generating: dict[tuple[str, ...], bool] | None = None
        """Whether each link generated key at the previous poll (None before the first)."""

    def poll_blocking(self) -> list[Sample]:
        request = ("subtree", f'<qkd_node xmlns="{NS}"/>')
        reply = self.session.call("get", lambda m: m.get(filter=request))
        node = find_container(reply.data_ele, NS, "qkd_node", self.session.where)
        at = now_ns()
        interfaces = self._interfaces(node)
        links = [
            self._link(link, interfaces, at) for link in node.findall(f"{Q}qkd_links/{Q}qkd_link")
        ]
        samples = [*links, *self._modules(interfaces, links, at), *self._events(links, at)]
        samples += [self._app(app, at) for app in node.findall(f"{Q}qkd_applications/{Q}qkd_app")]
        return samples

    def _interfaces(self, node: etree._Element) -> dict[str, dict[str, str]]:
        """qkdi_id -> the tags its module gives (vendor, technology)."""
        out: dict[str, dict[str, str]] = {}
        for interface in node.findall(f"{Q}qkd_interfaces/{Q}qkd_interface"):
            qkdi_id = _required(interface, "qkdi_id", f"{self.session.where}: qkd_interface")
            tags: dict[str, str] = {}
            model = _text(interface, "qkdi_model_number") or ""
            vendor = next((v for prefix, v in VENDORS.items() if model.startswith(prefix)), None)
            if vendor:
                tags["vendor"] = vendor
            kind = (_text(interface, "qkdi_type") or "").lower()
            if kind in ("dv", "cv"):
                tags["technology"] = kind
            out[qkdi_id] = tags
        return out

    def _link(self, link: etree._Element, interfaces: dict[str, dict[str, str]], at: int) -> Sample:
        qkdl_id = _required(link, "qkdl_id", f"{self.session.where}: qkd_link")
        where = f"{self.session.where}: qkd_link[qkdl_id={qkdl_id}]"
        status = _required(link, "qkdl_status", where)
        if status not in LINK_STATUS:
            raise Malformed(f"{where}: qkdl_status {status!r} is not a GS QKD 015 link state")
        remote = _required(link, "qkdl_remote/qkdn_id", where)
        module = _required(link, "qkdl_local/qkdi_id", where)
        tags = {
            **interfaces.get(module, {}),
            "module": module,
            "link": self.options.links.get(qkdl_id, qkdl_id),
            "peer": self.options.peers.get(remote, remote),
        }
        role = _text(link, "phys_qkd_role")
        if role in ("TRANSMITTER", "RECEIVER"):
            tags["direction"] = "tx" if role == "TRANSMITTER" else "rx"
        fields: dict[str, FieldValue] = {
            "link_status": LINK_STATUS[status],
            "vendor_state": status,
            "key_generating": status == "ACTIVE",
        }
        wavelength = _number(_text(link, "phys_wavelength"), f"{where}/phys_wavelength")
        if wavelength is not None:
            fields["wavelength_nm"] = wavelength
            channel = itu_channel(wavelength)
            tags["band"] = "C" if C_BAND_NM[0] <= wavelength <= C_BAND_NM[1] else "O"
            if channel is not None:
                tags["channel"] = str(channel)
        for leaf, name in (
            ("qkdl_performance/skr", "secret_key_rate_bps"),
            ("phys_qber", "qber"),
            ("phys_channel_att", "channel_loss_db"),
        ):
            value = _number(_text(link, leaf), f"{where}/{leaf}")
            if value is not None:
                fields[name] = value
        return Sample("qkd_link", tags, fields, at)

    def _events(self, links: list[Sample], at: int) -> list[Sample]:
        """`qkd_event` link_down / link_up for a link that stopped or started generating key
        since the previous poll (a GS QKD 015 agent has no SNMP trap to say so)."""
        now = {_link_key(s): bool(s.fields["key_generating"]) for s in links}
        before, self._generating = self._generating, now
        if before is None:
            return []
        events = []
        for link in links:
            key = _link_key(link)
            if key not in before or before[key] == now[key]:
                continue
            up = now[key]
            tags = {k: v for k, v in link.tags.items() if k in ("peer", "link", "vendor")}
            tags.update(event="link_up" if up else "link_down", severity="info" if up else "major")
            fields: dict[str, FieldValue] = {
                "notification": "qkdl_status",
                "source": self.options.where,
                "vendor_state": str(link.fields["vendor_state"]),
            }
            events.append(Sample("qkd_event", tags, fields, at))
        return events

    @staticmethod
    def _modules(
        interfaces: dict[str, dict[str, str]], links: list[Sample], at: int
    ) -> list[Sample]:
        """One `qkd_module` point per interface: its links and how many generate key."""
        samples = []
        for qkdi_id, tags in sorted(interfaces.items()):
            own = [s for s in links if s.tags["module"] == qkdi_id]
            fields: dict[str, FieldValue] = {
                "links": len(own),
                "links_generating": sum(bool(s.fields["key_generating"]) for s in own),
            }
            samples.append(Sample("qkd_module", {**tags, "module": qkdi_id}, fields, at))
        return samples

    def _app(self, app: etree._Element, at: int) -> Sample:
        app_id = _required(app, "app_id", f"{self.session.where}: qkd_app")
        where = f"{self.session.where}: qkd_app[app_id={app_id}]"
        tags = {"app_id": app_id}
        name = _text(app, "app_name")
        if name:
            tags["app_name"] = name
        backing = _text(app, "backing_qkdl_id")
        if backing:
            tags["link"] = self.options.links.get(backing, backing)
        fields: dict[str, FieldValue] = {"app_status": _text(app, "app_status") or ""}
        consumed = [
            _number(s.findtext(f"{Q}consumed_bits"), f"{where}/consumed_bits")
            for s in app.findall(f"{Q}app_statistics/{Q}statistics")
        ]
        if consumed:
            fields["consumed_bits_total"] = int(sum(c or 0 for c in consumed))
        return Sample("qkd_app", tags, fields, at)

    def close_blocking(self) -> None:
        self.session.close()

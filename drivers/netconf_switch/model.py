"""The optical switch's data (qkdtel-optical-switch.yang) read from a reply, and edits built.

Parsing is strict where the data would otherwise mislead: a reply without the module's
container (a wrong namespace), a port without its number, or a cross-connect without its egress
is `Malformed` naming where. State a server may not keep (direction, oper-state, the power
monitor: a generic NETCONF server such as netconfd has the configuration only) is optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lxml import etree

from qkdtel.drivers.netconf import find_container
from qkdtel.sdk import Malformed

NS = "urn:example:qkdtel:optical-switch"
MODULE = "qkdtel-optical-switch"
Q = f"{{{NS}}}"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
INVENTORY = ("manufacturer", "model-name", "serial-number", "firmware-version")


def yang_file() -> Path:
    """The YANG module shipped with the package (for yanglint, netconfd, a device's vendor)."""
    return Path(str(resources.files(__package__).joinpath(f"{MODULE}.yang")))


@dataclass(frozen=True)
class PortState:
    """One port as the switch reports it."""

    port_id: int
    label: str = ""
    admin_enabled: bool = True
    direction: str | None = None
    oper_state: str | None = None
    power_dbm: float | None = None


@dataclass(frozen=True)
class SwitchState:
    """The whole switch: inventory, ports and the cross-connect map (ingress -> egress)."""

    ports: dict[int, PortState]
    pairs: dict[int, int]
    inventory: dict[str, str] = field(default_factory=dict)


def _int(element: etree._Element, leaf: str, where: str) -> int:
    text = element.findtext(f"{Q}{leaf}")
    if text is None or not text.strip():
        raise Malformed(f"{where}: {leaf} is missing")
    try:
        return int(text.strip())
    except ValueError:
        raise Malformed(f"{where}: {leaf} {text.strip()!r} is not a port number") from None


def _float(text: str | None, where: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        raise Malformed(f"{where}: {text.strip()!r} is not a number") from None


def parse_switch(data: etree._Element | None, where: str) -> SwitchState:
    """A `SwitchState` from a get or get-config reply's <data>."""
    root = find_container(data, NS, "optical-switch", where)
    ports: dict[int, PortState] = {}
    for index, port in enumerate(root.findall(f"{Q}port"), start=1):
        port_where = f"{where}: optical-switch/port[{index}]"
        port_id = _int(port, "port-id", port_where)
        port_where = f"{where}: optical-switch/port[port-id={port_id}]"
        ports[port_id] = PortState(
            port_id=port_id,
            label=(port.findtext(f"{Q}label") or "").strip(),
            admin_enabled=(port.findtext(f"{Q}admin-state") or "enabled").strip() == "enabled",
            direction=_text(port, "direction"),
            oper_state=_text(port, "oper-state"),
            power_dbm=_float(port.findtext(f"{Q}power-monitor/{Q}power"), f"{port_where}/power"),
        )
    pairs: dict[int, int] = {}
    for index, pair in enumerate(root.findall(f"{Q}cross-connects/{Q}pair"), start=1):
        ingress = _int(pair, "ingress", f"{where}: cross-connects/pair[{index}]")
        pairs[ingress] = _int(pair, "egress", f"{where}: cross-connects/pair[ingress={ingress}]")
    inventory = {}
    for leaf in INVENTORY:
        text = _text(root, f"inventory/{Q}{leaf}")
        if text:
            inventory[leaf] = text
    return SwitchState(ports, pairs, inventory)


def _text(element: etree._Element, path: str) -> str | None:
    text = element.findtext(f"{Q}{path}")
    return text.strip() if text is not None else None


def pairs_edit(before: dict[int, int], after: dict[int, int]) -> str:
    """The edit-config <config> turning the cross-connect map `before` into `after`."""
    config = etree.Element(f"{{{NC}}}config", nsmap={"nc": NC})
    switch = etree.SubElement(config, f"{Q}optical-switch", nsmap={None: NS})
    connects = etree.SubElement(switch, f"{Q}cross-connects")
    for ingress in sorted(set(before) | set(after)):
        if before.get(ingress) == after.get(ingress):
            continue
        pair = etree.SubElement(connects, f"{Q}pair")
        etree.SubElement(pair, f"{Q}ingress").text = str(ingress)
        if ingress in after:
            pair.set(f"{{{NC}}}operation", "replace")
            etree.SubElement(pair, f"{Q}egress").text = str(after[ingress])
        else:
            pair.set(f"{{{NC}}}operation", "delete")
    return etree.tostring(config, encoding="unicode")


def subtree_filter() -> tuple[str, str]:
    """The subtree filter selecting this module's data (ncclient's `filter=` argument)."""
    return ("subtree", f'<optical-switch xmlns="{NS}"/>')

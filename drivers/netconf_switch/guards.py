"""Checks a cross-connect change must pass before anything is sent to a switch.

Operators' rule: classical traffic is under strict SLAs, so a port carrying classical channels
is never switched by accident; and a quantum path whose loss exceeds what its technology can
bear would only give a dead link, so it is refused with the computed figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qkdtel.drivers.netconf_switch.options import PortRole, SwitchOptions


class ChangeRefused(Exception):
    """A guard refused the change; nothing was sent to the switch."""


def touched_ports(before: Mapping[int, int], after: Mapping[int, int]) -> set[int]:
    """Every port whose cross-connect the change makes, breaks or moves."""
    ports: set[int] = set()
    for ingress in set(before) | set(after):
        if before.get(ingress) != after.get(ingress):
            ports.add(ingress)
            ports.update(p for p in (before.get(ingress), after.get(ingress)) if p is not None)
    return ports


def check_classical(
    before: Mapping[int, int], after: Mapping[int, int], options: SwitchOptions, override: bool
) -> None:
    """Refuse touching a classical port unless `override` (the operator said so)."""
    classical = sorted(
        p for p in touched_ports(before, after) if _role(options, p).carries == "classical"
    )
    if classical and not override:
        listed = ", ".join(
            f"{p}" if p in options.ports else f"{p} (not configured: taken as classical)"
            for p in classical
        )
        raise ChangeRefused(
            f"port {listed} carries classical channels (`ports:` of the device); "
            "refused without --override-classical"
        )


def _role(options: SwitchOptions, port: int) -> PortRole:
    role = options.ports.get(port)
    if role is None:
        # A port the configuration says nothing about may carry anything: treat it as
        # classical, the careful choice for shared optical gear.
        return PortRole(carries="classical")
    return role


@dataclass(frozen=True)
class OtherSwitch:
    """Another switch of the configuration, as read for following a path across it.

    `pairs` is its current cross-connect map, or None with `error` when it could not be read:
    only a path that actually reaches it is then refused."""

    name: str
    options: SwitchOptions
    pairs: Mapping[int, int] | None
    error: str | None = None


@dataclass(frozen=True)
class Hop:
    """One switch a quantum path crosses: in on `ingress` (over `link_in`), out on `egress`."""

    switch: str
    ingress: int
    egress: int
    link_in: str | None
    link_out: str | None
    """None: a QKD module's own port on the switch, where the path ends."""
    switch_db: float
    mux_db: float


@dataclass(frozen=True)
class PathLoss:
    """The accumulated loss of a quantum path through one or more switches.

    Model: the fibre spans of every link on the path, and for every switch crossed its
    `switch_loss_db` plus two multiplexer passes of its `mux_loss_db` (the quantum channel is
    taken off the incoming fibre and put onto the outgoing one: quantum and classical channels
    have their own switch ports). The terminals' own multiplexers belong to the module's budget
    and are not counted, so a path through one switch is fibre + switch + 2 x mux, as before."""

    hops: tuple[Hop, ...]
    fibre_db: float

    @property
    def switch_db(self) -> float:
        return sum(h.switch_db for h in self.hops)

    @property
    def mux_db(self) -> float:
        return sum(h.mux_db for h in self.hops)

    @property
    def total_db(self) -> float:
        return self.fibre_db + self.switch_db + self.mux_db

    def route(self) -> str:
        return route(self.hops)

    def parts(self) -> str:
        """`fibre 20.5 + 2 switches 1.0 + multiplexers 4.0` (the figure's parts)."""
        count = len(self.hops)
        switches = "switch" if count == 1 else f"{count} switches"
        return (
            f"fibre {self.fibre_db:.1f} + {switches} {self.switch_db:.1f} + "
            f"multiplexers {self.mux_db:.1f}"
        )


def route(hops: Sequence[Hop]) -> str:
    """`link 2 -> sw-quijote 3 -> 11 -> link 3 -> sw-quevedo 1 -> 11 -> link 4`."""
    parts = [_span(hops[0].link_in)]
    for hop in hops:
        parts += [f"{hop.switch} {hop.ingress} -> {hop.egress}", _span(hop.link_out)]
    return " -> ".join(parts)


def _span(link: str | None) -> str:
    return "module" if link is None else f"link {link}"


def _link(options: SwitchOptions, port: int, device: str) -> str | None:
    """The link of a quantum port (None: a module's own port, the path's end), or refuse:
    without either the loss cannot be known."""
    role = _role(options, port)
    link = role.link
    if link is None and role.module is None:
        raise ChangeRefused(
            f"{device}: port {port}: no link configured; cannot check the loss budget"
        )
    return link


def _hop(device: str, options: SwitchOptions, ingress: int, egress: int) -> Hop:
    return Hop(
        device,
        ingress,
        egress,
        _link(options, ingress, device),
        _link(options, egress, device),
        options.switch_loss_db,
        2 * options.mux_loss_db,
    )


def _on_link(role: PortRole, link: str, technology: str) -> bool:
    """A quantum port of `technology` on `link` (a link may carry CV and DV channels, each
    taken off to its own switch port)."""
    return role.carries == "quantum" and role.link == link and role.technology == technology


def _far_switch(
    link: str, here: str, others: Mapping[str, OtherSwitch], technology: str
) -> OtherSwitch | None:
    """The other switch with a `technology` quantum port on `link` (its far end), if any."""
    found = [
        o
        for o in others.values()
        if o.name != here and any(_on_link(r, link, technology) for r in o.options.ports.values())
    ]
    if len(found) > 1:
        names = ", ".join(sorted(o.name for o in found))
        raise ChangeRefused(f"link {link}: quantum ports on several switches ({names}); ambiguous")
    return found[0] if found else None


def _onward(
    link: str, here: str, others: Mapping[str, OtherSwitch], technology: str, downstream: bool
) -> Hop | None:
    """The hop the far switch of `link` makes with it: downstream, its ingress on `link` and
    where that goes; upstream, its egress on `link` and what feeds it. None: the path ends."""
    far = _far_switch(link, here, others, technology)
    if far is None:
        return None
    if far.pairs is None:
        raise ChangeRefused(
            f"cannot check the loss budget: {far.name} (far end of link {link}) could not be "
            f"read: {far.error}; --local-budget-only checks this switch's hop only"
        )
    found = [
        (ingress, egress)
        for ingress, egress in sorted(far.pairs.items())
        if _on_link(_role(far.options, ingress if downstream else egress), link, technology)
        and _role(far.options, egress if downstream else ingress).carries == "quantum"
    ]
    if len(found) > 1:
        raise ChangeRefused(
            f"{far.name}: several {technology.upper()} cross-connects on link {link} "
            f"({found}); cannot tell which one the path takes"
        )
    return _hop(far.name, far.options, *found[0]) if found else None


def follow_path(
    device: str,
    ingress: int,
    egress: int,
    options: SwitchOptions,
    others: Mapping[str, OtherSwitch],
    technology: str,
) -> tuple[Hop, ...]:
    """The hops of the end-to-end path a new cross-connect joins: from each of its links to
    the far switch, across that switch's current quantum cross-connect, and on, until a node
    without one. A path that comes back to a switch it crossed is refused (a loop)."""
    hops = [_hop(device, options, ingress, egress)]
    seen = {(device, ingress)}
    for downstream in (True, False):
        while True:
            edge = hops[-1] if downstream else hops[0]
            link = edge.link_out if downstream else edge.link_in
            if link is None:  # a module's own port: the path ends there
                break
            hop = _onward(link, edge.switch, others, technology, downstream)
            if hop is None:
                break
            if (hop.switch, hop.ingress) in seen:
                raise ChangeRefused(
                    f"{device}: quantum path loops back to {hop.switch} ({route(hops)})"
                )
            seen.add((hop.switch, hop.ingress))
            if downstream:
                hops.append(hop)
            else:
                hops.insert(0, hop)
    return tuple(hops)


def path_loss(hops: tuple[Hop, ...], link_loss_db: Mapping[str, float]) -> PathLoss:
    """The loss of the path `hops` make, fibre spans from the topology's link losses."""
    ends = [hops[0].link_in] + [h.link_out for h in hops]
    links = [link for link in ends if link is not None]
    missing = [link for link in links if link not in link_loss_db]
    if missing:
        raise ChangeRefused(
            f"link {missing[0]!r} is not in the topology; cannot check the loss budget"
        )
    return PathLoss(hops, sum(link_loss_db[link] for link in links))


def check_budget(
    device: str,
    before: Mapping[int, int],
    after: Mapping[int, int],
    options: SwitchOptions,
    link_loss_db: Mapping[str, float],
    others: Mapping[str, OtherSwitch] | None = None,
) -> None:
    """Refuse a new quantum cross-connect whose end-to-end path loss exceeds its technology's
    budget; the path is followed across `others` (their current maps), none: this hop only."""
    for ingress, egress in sorted(after.items()):
        if before.get(ingress) == egress:
            continue
        roles = (_role(options, ingress), _role(options, egress))
        if any(r.carries != "quantum" for r in roles):
            continue
        technology = roles[0].technology or roles[1].technology
        assert technology is not None  # quantum ports name one (SwitchOptions checks)
        budget = options.budget_db.get(technology)
        if budget is None:
            raise ChangeRefused(f"no loss budget configured for {technology} (budget_db)")
        switches = {**(others or {}), device: OtherSwitch(device, options, after)}
        hops = follow_path(device, ingress, egress, options, switches, technology)
        loss = path_loss(hops, link_loss_db)
        if loss.total_db > budget:
            raise ChangeRefused(
                f"{device}: quantum path {ingress} -> {egress} ({loss.route()}) would lose "
                f"{loss.total_db:.1f} dB ({loss.parts()}), over the "
                f"{technology.upper()} budget of {budget:.1f} dB; refused"
            )

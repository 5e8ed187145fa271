"""Checks a cross-connect change must pass before anything is sent to a switch.

Operators' rule: classical traffic is under strict SLAs, so a port carrying classical channels
is never switched by accident; and a quantum path whose loss exceeds what its technology can
bear would only give a dead link, so it is refused with the computed figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qkdtel.drivers.netconf_switch.options import PortRole, SwitchOptions


class ChangeRefused(Exception):
    """A guard refused the change; nothing was sent to the switch."""


@dataclass(frozen=True)
class PathLoss:
    """The accumulated loss of a quantum path through the switch."""

    fibre_db: float
    switch_db: float
    mux_db: float

    @property
    def total_db(self) -> float:
        return self.fibre_db + self.switch_db + self.mux_db


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


def path_loss(
    ingress: int, egress: int, options: SwitchOptions, link_loss_db: Mapping[str, float]
) -> PathLoss:
    """Loss of the path from the far end of the ingress port's link to the far end of the
    egress port's link: both fibre spans, the switch, and a multiplexer at each end."""
    fibre = 0.0
    for port in (ingress, egress):
        link = _role(options, port).link
        if link is None:
            raise ChangeRefused(f"port {port}: no link configured; cannot check the loss budget")
        if link not in link_loss_db:
            raise ChangeRefused(
                f"port {port}: link {link!r} is not in the topology; cannot check the loss budget"
            )
        fibre += link_loss_db[link]
    return PathLoss(fibre, options.switch_loss_db, 2 * options.mux_loss_db)


def check_budget(
    device: str,
    before: Mapping[int, int],
    after: Mapping[int, int],
    options: SwitchOptions,
    link_loss_db: Mapping[str, float],
) -> None:
    """Refuse a new quantum cross-connect whose path loss exceeds its technology's budget."""
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
        loss = path_loss(ingress, egress, options, link_loss_db)
        if loss.total_db > budget:
            links = f"link {roles[0].link} -> link {roles[1].link}"
            raise ChangeRefused(
                f"{device}: quantum path {ingress} -> {egress} ({links}) would lose "
                f"{loss.total_db:.1f} dB (fibre {loss.fibre_db:.1f} + switch "
                f"{loss.switch_db:.1f} + multiplexers {loss.mux_db:.1f}), over the "
                f"{technology.upper()} budget of {budget:.1f} dB; refused"
            )

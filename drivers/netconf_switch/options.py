"""Options of the optical-switch driver and of `qkdtel switch`, under a device in the file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from qkdtel.drivers.netconf import NetconfConnection
from qkdtel.sdk import Duration, Model

Technology = Literal["cv", "dv"]

DEFAULT_BUDGET_DB: dict[str, float] = {"cv": 23.0, "dv": 18.0}
"""Loss a quantum channel may see end to end. CV: "up to 23 dB" (the HWDU CV-QKD modules of
MadQCI, shared/DOMAIN.md). DV: not published for these modules; 18 dB is plausible for COW
and decoy-BB84 systems with InGaAs detectors in the C-band (invented, override per switch)."""


class PortRole(Model):
    """What a port carries, for the guards of `qkdtel switch` (checked before anything is sent)."""

    carries: Literal["quantum", "classical"] = Field(
        description="classical: never switched without --override-classical"
    )
    link: str | None = Field(None, description="topology link the port's fibre runs over")
    module: str | None = Field(
        None, description="quantum ports: the QKD module whose own port this is (a path ends)"
    )
    technology: Technology | None = Field(None, description="quantum ports: cv or dv")


class SwitchOptions(NetconfConnection):
    """One fibre cross-connect switch speaking qkdtel-optical-switch over NETCONF."""

    ports: dict[int, PortRole] = Field(
        default_factory=dict, description="port number -> what it carries (guards)"
    )
    validate_candidate: bool = Field(
        True,
        description="send <validate> before the commit (which validates anyway); false for "
        "netconfd 2.13 (yuma123), which drops the candidate at the commit after a validate",
    )
    confirm_timeout: Duration = Field(
        60.0, ge=5, le=3600, description="a change not confirmed by then rolls back by itself"
    )
    switch_loss_db: float = Field(
        0.5, ge=0, le=10, description="insertion loss of the switch (the topology's default)"
    )
    mux_loss_db: float = Field(
        1.0,
        ge=0,
        le=10,
        description="insertion loss of one multiplexer pass; each switch on a quantum path "
        "adds two (plausible for thin-film DWDM filters; not published for MadQCI)",
    )
    budget_db: dict[Technology, float] = Field(
        default_factory=lambda: dict(DEFAULT_BUDGET_DB),
        description="loss budget of a quantum path per technology",
    )

    @field_validator("ports")
    @classmethod
    def _quantum_ports_name_technology(cls, ports: dict[int, PortRole]) -> dict[int, PortRole]:
        for number, role in ports.items():
            if role.carries == "quantum" and role.technology is None:
                raise ValueError(f"port {number} carries quantum: give its technology (cv or dv)")
        return ports

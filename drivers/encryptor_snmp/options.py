"""Options of the encryptor driver: where the agent is, which product class, SNMP settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from qkdtel.drivers.qkd_snmp.options import SnmpSettings, split_address
from qkdtel.sdk import Model

EncryptorProfile = Literal["sitline_eth", "adva_otn"]

PROFILE_TAGS: dict[str, dict[str, str]] = {
    "sitline_eth": {"vendor": "rohde_schwarz", "layer": "l2"},
    "adva_otn": {"vendor": "adva", "layer": "l1"},
}
"""Tags of every point of a profile's devices (docs/metrics.md, encryptor measurements)."""


class EncryptorOptions(Model):
    """An encryptor polled over SNMP (the SNMP settings are those of the qkd_snmp driver)."""

    address: str = Field(description="host[:port] of the encryptor's SNMP agent (161 if none)")
    profile: EncryptorProfile = Field(description="product class: sitline_eth (L2), adva_otn (L1)")
    snmp: SnmpSettings = Field(default_factory=SnmpSettings)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if split_address(value)[1] == 0:
            raise ValueError("port 0 cannot be polled")
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        return split_address(self.address)

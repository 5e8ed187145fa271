"""Options of the encryptor driver: where the agent is, which product class, SNMP settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qkdtel.drivers.qkd_snmp.options import SnmpAgentOptions

EncryptorProfile = Literal["sitline_eth", "adva_otn"]

PROFILE_TAGS: dict[str, dict[str, str]] = {
    "sitline_eth": {"vendor": "rohde_schwarz", "layer": "l2"},
    "adva_otn": {"vendor": "adva", "layer": "l1"},
}
"""Tags of every point of a profile's devices (docs/metrics.md, encryptor measurements)."""


class EncryptorOptions(SnmpAgentOptions):
    """An encryptor polled over SNMP (the SNMP settings are those of the qkd_snmp driver)."""

    profile: EncryptorProfile = Field(description="product class: sitline_eth (L2), adva_otn (L1)")

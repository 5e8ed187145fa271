"""Options of the ETSI GS QKD 014 key-manager driver: the KME, our certificate, the SAE pairs."""

from __future__ import annotations

from pydantic import Field, model_validator

from qkdtel.drivers.https_json import HttpsSettings
from qkdtel.sdk import Model

SAE_ID_PATTERN = r"^[A-Za-z0-9._~-]{1,128}$"
"""URL-unreserved characters only: an SAE ID is a path segment, so none may add a segment
(`x/enc_keys`) or a query; the driver can only ever ask for `.../{slave}/status`."""


class SaePair(Model):
    """A pair of applications (SAEs) sharing keys through this KME."""

    master_sae_id: str = Field(
        pattern=SAE_ID_PATTERN, description="the SAE that asks this KME for keys"
    )
    slave_sae_id: str = Field(pattern=SAE_ID_PATTERN, description="the SAE it shares them with")


class Etsi014Options(HttpsSettings):
    """A key manager (KME): its base URL, mutual-TLS files, and the SAE pairs to watch."""

    sae_pairs: list[SaePair] = Field(min_length=1, description="pairs whose key stock is read")

    @model_validator(mode="after")
    def _distinct_pairs(self) -> Etsi014Options:
        seen = set()
        for index, pair in enumerate(self.sae_pairs):
            key = (pair.master_sae_id, pair.slave_sae_id)
            if key in seen:
                raise ValueError(f"sae_pairs[{index}] repeats {key[0]} -> {key[1]}")
            seen.add(key)
        return self

"""Options of the SD-QKD node driver (ETSI GS QKD 015 over NETCONF)."""

from __future__ import annotations

from pydantic import Field

from qkdtel.drivers.netconf import NetconfConnection


class SdQkdOptions(NetconfConnection):
    """One SD-QKD node's agent. GS QKD 015 names nodes and links by UUID; the two maps give
    the tags dashboards group by (the SNMP driver's `peer` and `link`)."""

    peers: dict[str, str] = Field(
        default_factory=dict, description="node UUID -> site (tag `peer`; unmapped: the UUID)"
    )
    links: dict[str, str] = Field(
        default_factory=dict,
        description="QKD link UUID -> network link id (tag `link`, e.g. 4; unmapped: the UUID)",
    )

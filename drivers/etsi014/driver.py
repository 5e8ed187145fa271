"""The `etsi014` driver: a key manager's (KME's) key stock per SAE pair -> `kme_key_store`.

ETSI GS QKD 014 gives an SAE three calls: `status`, `enc_keys` and `dec_keys`. This driver
only ever builds `GET /api/v1/keys/{slave_SAE_ID}/status` (`status_path`; SAE IDs are
validated to be single path segments), so no code path can fetch key material. A KME that
answers a status request with key material (a `keys` array) is refused: nothing of the body
is kept, logged or put in the error.

Between polls the driver remembers each pair's stock and when it was read, to derive the net
drain rate and the time until the stock is empty at that rate, and to emit a `kme_event`
when a stock runs dry or refills.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from qkdtel.drivers.etsi014.options import Etsi014Options, SaePair
from qkdtel.drivers.https_json import JsonStatusClient
from qkdtel.sdk import Driver, FieldValue, Malformed, Sample, now_ns

_COUNTS = {  # ETSI GS QKD 014 status member -> field of kme_key_store (docs/metrics.md)
    "stored_key_count": "stored_key_count",
    "max_key_count": "max_key_count",
    "key_size": "key_size_bits",
    "max_key_per_request": "max_key_per_request",
    "max_key_size": "max_key_size_bits",
    "min_key_size": "min_key_size_bits",
    "max_SAE_ID_count": "max_sae_id_count",
}
_REQUIRED_COUNTS = ("stored_key_count", "max_key_count", "key_size")
_IDS = {  # status member -> tag
    "source_KME_ID": "source_kme_id",
    "target_KME_ID": "target_kme_id",
    "master_SAE_ID": "master_sae_id",
    "slave_SAE_ID": "slave_sae_id",
}
_EMPTY_EVENT = ("key_store_empty", "major")
_REFILLED_EVENT = ("key_store_refilled", "info")


def status_path(pair: SaePair) -> str:
    """The one request this driver makes: the status of the keys shared with the slave SAE."""
    return f"/api/v1/keys/{quote(pair.slave_sae_id, safe='')}/status"


@dataclass(frozen=True)
class Status:
    """A key-stock status as the KME reported it, checked."""

    ids: dict[str, str]
    counts: dict[str, int]

    @property
    def stored(self) -> int:
        return self.counts["stored_key_count"]


def read_status(where: str, body: dict[str, Any], pair: SaePair) -> Status:
    """Check an ETSI GS QKD 014 status object; `Malformed` naming the member at fault.

    Refuses key material first, before looking at anything else in the body.
    """
    if "keys" in body:
        raise Malformed(
            f"{where}: answered key material (a keys array) where a status was expected; "
            "refused, nothing of it kept or logged"
        )
    counts: dict[str, int] = {}
    for member in _COUNTS:
        value = body.get(member)
        if value is None and member not in _REQUIRED_COUNTS:
            continue
        if type(value) is not int or value < 0:
            shown = "missing" if value is None else f"a {type(value).__name__}"
            raise Malformed(f"{where}: {member} must be a non-negative integer, got {shown}")
        counts[member] = value
    ids: dict[str, str] = {}
    for member, tag in _IDS.items():
        value = body.get(member)
        if not isinstance(value, str) or not value.strip() or len(value) > 256:
            raise Malformed(f"{where}: {member} must be a non-empty string of <= 256 characters")
        ids[tag] = value
    expected = (pair.master_sae_id, pair.slave_sae_id)
    if (ids["master_sae_id"], ids["slave_sae_id"]) != expected:
        raise Malformed(
            f"{where}: status is for {ids['master_sae_id']} -> {ids['slave_sae_id']}, "
            f"configured {expected[0]} -> {expected[1]}"
        )
    return Status(ids, counts)


@dataclass
class _Seen:
    """A pair's stock at the previous poll."""

    stored: int
    at: float
    empty: bool


class Etsi014Driver(Driver[Etsi014Options]):
    """Key managers (KMEs) over ETSI GS QKD 014: key stock per SAE pair, never keys."""

    description: ClassVar[str] = "key manager over ETSI GS QKD 014 (kme_key_store, kme_event)"

    def __init__(self, name: str, options: Etsi014Options, timeout: float):
        super().__init__(name, options, timeout)
        self._client = JsonStatusClient(options, timeout)
        self._seen: dict[tuple[str, str], _Seen] = {}

    async def poll(self) -> list[Sample]:
        """All pairs at once; one pair failing fails the poll (naming that pair's URL)."""
        statuses = await asyncio.gather(*(self._status(p) for p in self.options.sae_pairs))
        read_at, stamp = time.monotonic(), now_ns()
        samples: list[Sample] = []
        for pair, status in zip(self.options.sae_pairs, statuses, strict=True):
            samples += self._samples(pair, status, read_at, stamp)
        return samples

    async def _status(self, pair: SaePair) -> Status:
        path = status_path(pair)
        body = await self._client.get_object(path)
        return read_status(f"{self._client.where}{path}", body, pair)

    def _samples(self, pair: SaePair, status: Status, now: float, stamp: int) -> list[Sample]:
        """The pair's `kme_key_store` point, and a `kme_event` when its stock ran dry or
        refilled since the previous poll (or is empty at the first)."""
        key = (pair.master_sae_id, pair.slave_sae_id)
        fields: dict[str, FieldValue] = {
            _COUNTS[member]: value for member, value in status.counts.items()
        }
        capacity = status.counts["max_key_count"]
        fields["stored_key_bits"] = status.stored * status.counts["key_size"]
        if capacity:
            fields["fill_ratio"] = min(1.0, status.stored / capacity)
        empty = status.stored == 0
        fields["key_store_empty"] = empty
        previous = self._seen.get(key)
        self._seen[key] = _Seen(status.stored, now, empty)
        if previous is not None and now > previous.at:
            drain = (previous.stored - status.stored) / (now - previous.at)
            fields["net_drain_keys_per_s"] = drain
            if drain > 0:
                fields["time_to_empty_s"] = status.stored / drain
        samples = [Sample("kme_key_store", dict(status.ids), fields, stamp)]
        if empty != (previous.empty if previous else False):
            event, severity = _EMPTY_EVENT if empty else _REFILLED_EVENT
            samples.append(
                Sample(
                    "kme_event",
                    {**status.ids, "event": event, "severity": severity},
                    {"stored_key_count": status.stored},
                    stamp,
                )
            )
        return samples

    async def aclose(self) -> None:
        await self._client.aclose()

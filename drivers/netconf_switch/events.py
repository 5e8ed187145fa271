"""Cross-connect changes as `optical_switch_event` points, from a poll or a notification."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from qkdtel.sdk import Sample, now_ns

MEASUREMENT = "optical_switch_event"
Change = tuple[int, int, Literal["added", "removed"]]


def map_changes(before: Mapping[int, int], after: Mapping[int, int]) -> list[Change]:
    """The pairs that disappeared and those that appeared between two cross-connect maps."""
    removed: list[Change] = [(i, e, "removed") for i, e in before.items() if after.get(i) != e]
    added: list[Change] = [(i, e, "added") for i, e in after.items() if before.get(i) != e]
    return sorted(removed) + sorted(added)


def change_events(
    changes: Iterable[Change], source: Literal["poll", "notification"], at: int | None = None
) -> list[Sample]:
    """One point per changed pair, naming both ports."""
    at = at if at is not None else now_ns()
    return [
        Sample(
            MEASUREMENT,
            {"event": f"cross_connect_{change}", "ingress": str(ingress), "egress": str(egress)},
            {"source": source, "message": f"cross-connect {ingress} -> {egress} {change}"},
            at,
        )
        for ingress, egress, change in changes
    ]

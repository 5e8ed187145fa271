"""Encryptor notifications (QKDTEL-ENCRYPTOR-MIB traps) -> `encryptor_event` points.

The `snmp_traps` listener (drivers/qkd_snmp/traps.py) owns the socket and the security gate
for every SNMP notification the collector receives; what it does not recognise as a QKD
module's it offers here. A fallback to classical keys then reaches the store when it happens,
not only at the next poll (the driver's own `encryptor_event` from comparing two polls).

A trap carries the association's peer, key source and state; the port, key interface, vendor
and layer are not in it and are left out of the point.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from qkdtel.drivers.encryptor_snmp.driver import ENCRYPTOR_MIB, STATES
from qkdtel.drivers.qkd_snmp.resolve import ObjectInfo, notification_info, object_infos
from qkdtel.sdk import Malformed, Sample, now_ns

log = logging.getLogger(__name__)

MEASUREMENT = "encryptor_event"
EVENTS = {  # notification -> (event, severity) of docs/metrics.md
    "qencClassicalFallback": ("classical_fallback", "major"),
    "qencQkdKeyRestored": ("qkd_restored", "info"),
    "qencKeyWait": ("key_wait", "critical"),
}


@dataclass(frozen=True)
class _Kind:
    name: str
    objects: Mapping[str, ObjectInfo]


@cache
def _kinds() -> dict[tuple[int, ...], _Kind]:
    """Notification OID -> what it is and the objects it carries (through the compiled MIB)."""
    kinds = {}
    for name in EVENTS:
        oid, carried = notification_info(ENCRYPTOR_MIB, name)
        kinds[oid] = _Kind(name, object_infos(ENCRYPTOR_MIB, *carried))
    return kinds


def encryptor_event(
    trap_oid: Any,
    values: Mapping[tuple[int, ...], Any],
    device: str,
    device_tags: Mapping[str, str],
    source: str,
) -> Sample | None:
    """The `encryptor_event` of a notification, or None if it is not an encryptor's.

    `values` are the notification's varbinds by OID, decoded to plain values (ber.py).
    """
    kind = _kinds().get(trap_oid) if isinstance(trap_oid, tuple) else None
    if kind is None:
        return None
    decoded: dict[str, int | str] = {}
    for name, info in kind.objects.items():
        for oid, value in values.items():
            if oid[: len(info.oid)] == info.oid and len(oid) > len(info.oid):
                try:
                    decoded[name] = info.decode(value, name)
                except Malformed as exc:  # a bad value loses its field, not the event
                    log.warning("%s from %s: %s", kind.name, source, exc)
                break
    event, severity = EVENTS[kind.name]
    tags = {**device_tags, "device": device, "event": event, "severity": severity}
    if isinstance(decoded.get("qencAssocPeer"), str) and decoded["qencAssocPeer"]:
        tags["peer"] = str(decoded["qencAssocPeer"])
    fields: dict[str, Any] = {"notification": kind.name, "source": source}
    if "qencAssocKeySource" in decoded:
        fields["key_source"] = str(decoded["qencAssocKeySource"])
    if "qencAssocState" in decoded:
        fields["state"] = STATES[str(decoded["qencAssocState"])]
    return Sample(MEASUREMENT, tags, fields, now_ns())

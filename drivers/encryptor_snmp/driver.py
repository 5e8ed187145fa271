"""The `encryptor_snmp` driver: an L1/L2 link encryptor over SNMP -> `encryptor`,
`encryptor_port`, `encryptor_association` and `encryptor_event` points.

The SNMP layer is the QKD driver's (client, BER codec, USM, MIB resolution): only the objects
differ. Ports come from the standard IF-MIB (ifTable and ifXTable), encryption associations
from the modelled QKDTEL-ENCRYPTOR-MIB. A poll is one GET of the system scalars and two
GETBULK walks (ports, associations), sent concurrently.

Between polls the driver keeps the 64-bit octet counters (for throughput) and each
association's fallback state, so that falling back to the classical key exchange, and
returning to QKD keys, is an `encryptor_event` even when no trap reaches the collector.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from qkdtel.drivers.encryptor_snmp.options import PROFILE_TAGS, EncryptorOptions
from qkdtel.drivers.qkd_snmp.client import is_missing
from qkdtel.drivers.qkd_snmp.driver import make_client
from qkdtel.drivers.qkd_snmp.resolve import ObjectInfo, object_infos
from qkdtel.sdk import Driver, FieldValue, NoSuchObject, Sample, now_ns

Index = tuple[int, ...]
Row = dict[str, int | str]

ENCRYPTOR_MIB = "QKDTEL-ENCRYPTOR-MIB"
SCALARS = ("qencModel", "qencLayer", "qencCipher")
IF_COLUMNS = ("ifDescr", "ifAdminStatus", "ifOperStatus", "ifInDiscards", "ifInErrors")
IF_COLUMNS += ("ifOutDiscards", "ifOutErrors")
IFX_COLUMNS = ("ifName", "ifHCInOctets", "ifHCOutOctets", "ifHighSpeed")
ASSOC_COLUMNS = (
    "qencAssocIfIndex",
    "qencAssocPeer",
    "qencAssocKeyInterface",
    "qencAssocKeySource",
    "qencAssocState",
    "qencAssocKeyRefreshes",
    "qencAssocSecondsSinceRefresh",
    "qencAssocKeyFetchFailures",
    "qencAssocFallbacks",
)
PORT_TOTALS = {  # IF-MIB counter -> field (totals since the port's counters started)
    "ifInErrors": "in_errors_total",
    "ifOutErrors": "out_errors_total",
    "ifInDiscards": "in_discards_total",
    "ifOutDiscards": "out_discards_total",
}
OCTET_RATES = {"ifHCInOctets": "rx_bps", "ifHCOutOctets": "tx_bps"}
ASSOC_TOTALS = {
    "qencAssocKeyRefreshes": "key_refreshes_total",
    "qencAssocKeyFetchFailures": "key_fetch_failures_total",
    "qencAssocFallbacks": "fallbacks_total",
}
STATES = {  # MIB state -> state field (docs/metrics.md)
    "encrypting": "encrypting",
    "classicalFallback": "classical_fallback",
    "keyWait": "key_wait",
    "down": "down",
}
KEY_INTERFACES = {"etsi004": "etsi004", "etsi014": "etsi014", "none": "none"}


def _objects() -> dict[str, ObjectInfo]:
    """Every object the driver reads, resolved through the compiled MIBs (names, never OIDs)."""
    return {
        **object_infos(ENCRYPTOR_MIB, *SCALARS, *ASSOC_COLUMNS),
        **object_infos("IF-MIB", *IF_COLUMNS, *IFX_COLUMNS),
    }


_FALLBACK_EVENT = ("classical_fallback", "major")
_RESTORED_EVENT = ("qkd_restored", "info")


def _port_name(row: Row) -> str:
    """ifName, or ifDescr where the agent leaves the name empty."""
    return str(row.get("ifName") or row["ifDescr"])


def _dotted(index: Index) -> str:
    return "." + ".".join(map(str, index))


class EncryptorSnmpDriver(Driver[EncryptorOptions]):
    """L2 Ethernet (R&S SITLine ETH class) and L1 OTN (ADVA class) encryptors over SNMP."""

    description: ClassVar[str] = "link encryptor over SNMP (encryptor, _port, _association)"

    def __init__(self, name: str, options: EncryptorOptions, timeout: float):
        super().__init__(name, options, timeout)
        self._objects = _objects()
        host, port = options.host_port
        self._client = make_client(host, port, options.snmp)
        self._octets: dict[tuple[str, Index], tuple[int, float]] = {}
        self._fallback: dict[Index, bool] = {}

    def _oids(self, names: tuple[str, ...]) -> list[tuple[int, ...]]:
        return [self._objects[name].oid for name in names]

    async def poll(self) -> list[Sample]:
        repetitions = self.options.snmp.max_repetitions
        scalars, ports, assocs = await asyncio.gather(
            self._client.get([(*oid, 0) for oid in self._oids(SCALARS)]),
            self._client.walk(self._oids(IF_COLUMNS + IFX_COLUMNS), repetitions),
            self._client.walk(self._oids(ASSOC_COLUMNS), repetitions),
        )
        read_at, stamp = time.monotonic(), now_ns()
        system = self._scalars(scalars)
        port_rows = self._rows(IF_COLUMNS + IFX_COLUMNS, ports, "ifTable")
        assoc_rows = self._rows(ASSOC_COLUMNS, assocs, "qencAssocTable")
        names = {
            index: str(row.get("ifName") or row["ifDescr"]) for index, row in port_rows.items()
        }

        tags = dict(PROFILE_TAGS[self.options.profile])
        samples = [self._port(tags, i, row, read_at, stamp) for i, row in port_rows.items()]
        fallbacks = 0
        for index, row in assoc_rows.items():
            point, event = self._association(tags, index, row, names, stamp)
            fallbacks += bool(point.fields["classical_fallback"])
            samples += [point, *([event] if event else [])]
        ports_up = sum(1 for row in port_rows.values() if row["ifOperStatus"] == "up")
        samples.append(
            Sample(
                "encryptor",
                tags,
                {
                    "model": str(system["qencModel"]),
                    "cipher": str(system["qencCipher"]),
                    "ports": len(port_rows),
                    "ports_up": ports_up,
                    "associations": len(assoc_rows),
                    "associations_in_fallback": fallbacks,
                },
                stamp,
            )
        )
        return samples

    def _scalars(self, values: list[Any]) -> Row:
        out: Row = {}
        for name, value in zip(SCALARS, values, strict=True):
            if is_missing(value):
                raise NoSuchObject(f"{self._client.where}: {name}.0 does not exist on the agent")
            out[name] = self._objects[name].decode(value, f"{name}.0")
        return out

    def _rows(
        self, names: tuple[str, ...], columns: list[list[Any]], table: str
    ) -> dict[Index, Row]:
        """Per-column walk results -> rows by index, every cell decoded."""
        rows: dict[Index, Row] = {}
        for name, cells in zip(names, columns, strict=True):
            if not cells:
                raise NoSuchObject(f"{self._client.where}: {table} column {name} is absent")
            info = self._objects[name]
            for index, value in cells:
                rows.setdefault(index, {})[name] = info.decode(value, f"{name}{_dotted(index)}")
        return dict(sorted(rows.items()))

    def _port(self, tags: dict[str, str], index: Index, row: Row, now: float, stamp: int) -> Sample:
        """One `encryptor_port`: link state, speed, error/discard totals, throughput."""
        fields: dict[str, FieldValue] = {
            "oper_status": str(row["ifOperStatus"]),
            "link_up": row["ifOperStatus"] == "up",
            "admin_up": row["ifAdminStatus"] == "up",
            "speed_bps": float(row["ifHighSpeed"]) * 1e6,
        }
        fields.update({field: int(row[name]) for name, field in PORT_TOTALS.items()})
        for name, field in OCTET_RATES.items():
            rate = self._rate(name, index, int(row[name]), now)
            if rate is not None:
                fields[field] = rate * 8
        return Sample("encryptor_port", {**tags, "port": _port_name(row)}, fields, stamp)

    def _rate(self, name: str, index: Index, value: int, now: float) -> float | None:
        """Per-second increase since the previous poll; None at first, or after a reset."""
        previous = self._octets.get((name, index))
        self._octets[(name, index)] = (value, now)
        if previous is None or value < previous[0] or now <= previous[1]:
            return None
        return (value - previous[0]) / (now - previous[1])

    def _association(
        self, tags: dict[str, str], index: Index, row: Row, ports: dict[Index, str], stamp: int
    ) -> tuple[Sample, Sample | None]:
        """One `encryptor_association`, and an `encryptor_event` if it fell back to classical
        keys, or came back to QKD keys, since the previous poll."""
        state = STATES[str(row["qencAssocState"])]
        fallback = state == "classical_fallback"
        assoc_tags = {
            **tags,
            "peer": str(row["qencAssocPeer"]),
            "port": ports.get((int(row["qencAssocIfIndex"]),), str(row["qencAssocIfIndex"])),
            "key_interface": KEY_INTERFACES[str(row["qencAssocKeyInterface"])],
        }
        fields: dict[str, FieldValue] = {
            "key_source": str(row["qencAssocKeySource"]),
            "state": state,
            "encrypting": state in ("encrypting", "classical_fallback"),
            "classical_fallback": fallback,
            "seconds_since_refresh": float(row["qencAssocSecondsSinceRefresh"]),
        }
        fields.update({field: int(row[name]) for name, field in ASSOC_TOTALS.items()})
        previous = self._fallback.get(index, False)
        self._fallback[index] = fallback
        event = None
        if fallback != previous:
            name, severity = (
                ("classical_fallback", "major") if fallback else ("qkd_restored", "info")
            )
            event = Sample(
                "encryptor_event",
                {**assoc_tags, "event": name, "severity": severity},
                {"key_source": fields["key_source"], "state": state},
                stamp,
            )
        return Sample("encryptor_association", assoc_tags, fields, stamp), event

    async def aclose(self) -> None:
        await self._client.aclose()

"""The `qkd_snmp` driver: one QKD module over SNMP -> `qkd_link` and `qkd_module` points.

A poll is one GET of the profile's scalars and one GETBULK walk of its link table, sent
concurrently, then the profile's table is applied to every row. The driver remembers two
things between polls: counter readings (to turn Toshiba's Counter64 bit counts into rates)
and the table's size and last row (so the next GETBULK asks for exactly that, in one round
trip when the table has not changed).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from qkdtel.drivers.qkd_snmp.client import SnmpClient, is_missing
from qkdtel.drivers.qkd_snmp.options import QkdSnmpOptions, SnmpSettings
from qkdtel.drivers.qkd_snmp.resolve import Resolved, resolve
from qkdtel.drivers.qkd_snmp.usm import UsmClient
from qkdtel.drivers.qkd_snmp.v2c import V2cClient
from qkdtel.sdk import Driver, PartialPoll, Sample, now_ns

Index = tuple[int, ...]


def make_client(host: str, port: int, settings: SnmpSettings) -> SnmpClient:
    """The client for the settings' SNMP version."""
    if settings.version == "3":
        return UsmClient(host, port, settings)
    return V2cClient(host, port, settings)


def _dotted(index: Index) -> str:
    return "." + ".".join(map(str, index))


class QkdSnmpDriver(Driver[QkdSnmpOptions]):
    """QKD modules (ID Quantique Cerberis 3, Toshiba, HWDU CV, AIT CV) over SNMP v2c/v3."""

    description: ClassVar[str] = "QKD module over SNMP (qkd_link, qkd_module)"

    def __init__(self, name: str, options: QkdSnmpOptions, timeout: float):
        super().__init__(name, options, timeout)
        self._mib: Resolved = resolve(options.profile)  # MIB errors surface at start-up
        host, port = options.host_port
        self._client = make_client(host, port, options.snmp)
        self._last_index: Index | None = None  # last row of the table at the previous poll
        self._rows_seen = 0
        self._counters: dict[tuple[str, Index], tuple[int, float]] = {}

    async def poll(self) -> list[Sample]:
        mib = self._mib
        # Ask for as many rows as last time: with the end-of-table probe (see walk) a table
        # that kept its size takes one GETBULK with nothing beyond it.
        repetitions = self.options.snmp.max_repetitions
        if self._rows_seen:
            repetitions = min(repetitions, self._rows_seen)
        scalars, columns = await asyncio.gather(
            self._client.get(mib.scalar_oids),
            self._client.walk(mib.column_oids, repetitions, self._last_index),
        )
        read_at = time.monotonic()
        missing: list[str] = []
        module_values = self._scalar_values(scalars, missing)
        rows = self._rows(columns, missing)
        self._rows_seen, self._last_index = len(rows), max(rows, default=None)

        stamp = now_ns()
        profile = mib.profile
        samples: list[Sample] = []
        generating = 0
        for index, values in rows.items():
            tags, fields = mib.convert(profile.columns, values, _dotted(index))
            fields.update(self._rates(index, values, read_at))
            generating += bool(fields.get("key_generating"))
            samples.append(
                Sample(
                    "qkd_link",
                    {**profile.module_tags, **profile.link_tags, **tags},
                    fields,
                    stamp,
                )
            )
        _, module_fields = mib.convert(profile.scalars, module_values, ".0")
        module_fields.update(links=len(rows), links_generating=generating)
        samples.append(Sample("qkd_module", dict(profile.module_tags), module_fields, stamp))
        return PartialPoll(samples, missing) if missing else samples

    def _scalar_values(self, values: list[Any], missing: list[str]) -> dict[str, int | str]:
        """Scalars by name, decoded; one the agent lacks is left out and named in `missing`."""
        decoded: dict[str, int | str] = {}
        for name, value in zip(self._mib.profile.scalar_names, values, strict=True):
            if is_missing(value):
                missing.append(f"{name}.0")
                continue
            decoded[name] = self._mib.objects[name].decode(value, f"{name}.0")
        return decoded

    def _rows(
        self, columns: list[list[tuple[Index, Any]]], missing: list[str]
    ) -> dict[Index, dict[str, int | str]]:
        """Per-column walk results -> rows by index, every cell decoded.

        An empty table is zero links (SNMP cannot tell it from an absent one); a column absent
        while others have rows is left out of every row and named in `missing`.
        """
        names = self._mib.profile.column_names
        rows: dict[Index, dict[str, int | str]] = {}
        if not any(columns):
            return rows
        for name, cells in zip(names, columns, strict=True):
            if not cells:
                missing.append(name)
                continue
            info = self._mib.objects[name]
            for index, value in cells:
                rows.setdefault(index, {})[name] = info.decode(value, f"{name}{_dotted(index)}")
        return dict(sorted(rows.items()))

    def _rates(self, index: Index, values: dict[str, int | str], now: float) -> dict[str, float]:
        """Per-second rates of the profile's counters since the previous poll.

        None on the first reading, and none after a counter went backwards (module restart,
        counter reset): a negative or wrapped difference would be a lie.
        """
        rates: dict[str, float] = {}
        for counter in self._mib.profile.counters:
            value = values.get(counter.source)
            if not isinstance(value, int):
                continue
            key = (counter.source, index)
            previous = self._counters.get(key)
            self._counters[key] = (value, now)
            if previous is not None and value >= previous[0] and now > previous[1]:
                rates[counter.rate] = (value - previous[0]) / (now - previous[1])
        return rates

    async def aclose(self) -> None:
        await self._client.aclose()

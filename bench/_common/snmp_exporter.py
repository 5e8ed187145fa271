"""prometheus-snmp-exporter beside the qkd_snmp driver: an snmp.yml generated from the
driver's profiles, the exporter process, and the check that a scrape read what the driver read.

The generated snmp.yml has one module per profile and version: `get` of the scalars the driver
reads, `walk` of the link table (the driver reads every column of it), the driver's
max-repetitions, timeout and retries, text columns the driver turns into tags as `lookups`,
enumerations as `EnumAsInfo`. Names come from the profiles; OIDs, syntaxes and the table's INDEX
from the compiled MIBs through pysnmp. 0.21's file is a map of module names (the `modules:` /
`auths:` layout is 0.23's).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from pyasn1.type import univ
from pysnmp.proto import rfc1902
from pysnmp.smi import view

from _common.procs import free_tcp_port, process_cpu, wait_listening
from _common.snmp_agents import MAX_REPETITIONS, REQUEST_TIMEOUT_S, RETRIES
from qkdtel.drivers.qkd_snmp.profiles import PROFILES, SnmpProfile
from qkdtel.mibs import mib_builder
from qkdtel.sims.snmp.agent import Credentials

EXPORTER = "/usr/bin/prometheus-snmp-exporter"


@dataclass(frozen=True)
class ExporterModule:
    """What the exporter module of one profile reads, and how to recognise its answer."""

    name: str
    config: dict[str, Any]
    first_column: str  # metric of the table's first column: present in every good scrape
    peer_column: str  # the column the driver turns into the `peer` tag
    scalars: tuple[str, ...]


def _dotted(oid: Sequence[int]) -> str:
    return ".".join(map(str, oid))


def _metric_type(syntax: Any) -> str:
    if isinstance(syntax, rfc1902.Counter64 | rfc1902.Counter32):
        return "counter"
    if isinstance(syntax, univ.OctetString):
        return "DisplayString"
    if isinstance(syntax, univ.Integer) and syntax.namedValues:
        return "EnumAsInfo"
    return "gauge"


def exporter_modules(version: str, credentials: Credentials) -> dict[str, ExporterModule]:
    """One snmp.yml module per profile, from the names the driver's profiles read.

    Objects are named by the profiles; OIDs, syntaxes and the table's INDEX come from the
    compiled MIBs through pysnmp (MibBuilder / MibViewController). Text columns the driver
    turns into tags become lookups (labels on every metric of the row), as a hand-written
    generator.yml would do.
    """
    builder = mib_builder()
    mib_view = view.MibViewController(builder)
    if version == "2c":
        params: dict[str, Any] = {"version": 2, "auth": {"community": credentials.community}}
    else:
        params = {
            "version": 3,
            "auth": {
                "security_level": "authPriv",
                "username": credentials.user,
                "password": credentials.auth_key,
                "auth_protocol": "SHA256",
                "priv_protocol": "AES",
                "priv_password": credentials.priv_key,
            },
        }
    params.update(max_repetitions=MAX_REPETITIONS, timeout=f"{REQUEST_TIMEOUT_S}s", retries=RETRIES)
    modules = {}
    for profile in PROFILES.values():
        modules[profile.name] = _exporter_module(builder, mib_view, profile, version, params)
    return modules


def _exporter_module(
    builder: Any, mib_view: Any, profile: SnmpProfile, version: str, params: dict[str, Any]
) -> ExporterModule:
    (table,) = builder.import_symbols(profile.mib, profile.table)
    mib, entry_name, _ = mib_view.get_node_location((*table.name, 1))
    (entry,) = builder.import_symbols(mib, entry_name)
    indexes = []
    for _, index_mib, index_name in entry.getIndexNames():
        (index,) = builder.import_symbols(index_mib, index_name)
        indexes.append({"labelname": index_name, "type": _metric_type(index.syntax)})
    index_labels = [i["labelname"] for i in indexes]

    tag_sources = [out.source for out in profile.columns if out.tag and isinstance(out.source, str)]
    columns = {name: builder.import_symbols(profile.mib, name)[0] for name in profile.column_names}
    lookups = [
        {
            "labels": index_labels,
            "labelname": name,
            "oid": _dotted(columns[name].name),
            "type": _metric_type(columns[name].syntax),
        }
        for name in dict.fromkeys(tag_sources)
        if _metric_type(columns[name].syntax) in ("DisplayString", "gauge")
    ]
    metrics = []
    for name in profile.scalar_names:
        (symbol,) = builder.import_symbols(profile.mib, name)
        metrics.append(_metric(name, symbol, []))
    for name, symbol in columns.items():
        metric = _metric(name, symbol, indexes)
        metric["lookups"] = [lookup for lookup in lookups if lookup["labelname"] != name]
        metrics.append(metric)
    scalar_oids = [
        _dotted((*builder.import_symbols(profile.mib, n)[0].name, 0)) for n in profile.scalar_names
    ]
    peer = next(out.source for out in profile.columns if out.name == "peer")
    return ExporterModule(
        name=f"{profile.name}_v{version}",
        config={
            "get": scalar_oids,
            "walk": [_dotted(table.name)],
            "metrics": metrics,
            **params,
        },
        first_column=profile.column_names[0],
        peer_column=str(peer),
        scalars=profile.scalar_names,
    )


def _metric(name: str, symbol: Any, indexes: list[dict[str, str]]) -> dict[str, Any]:
    kind = _metric_type(symbol.syntax)
    metric: dict[str, Any] = {
        "name": name,
        "oid": _dotted(symbol.name),
        "type": kind,
        "help": f"{name} (qkdtel bench)",
    }
    if indexes:
        metric["indexes"] = indexes
    if kind == "EnumAsInfo":
        metric["enum_values"] = {
            number: label for label, number in symbol.syntax.namedValues.items()
        }
    return metric


class _PlainDumper(yaml.SafeDumper):
    """Writes shared lists in full rather than as YAML anchors (a readable snmp.yml)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class Exporter:
    """prometheus-snmp-exporter on a free loopback port with the generated snmp.yml."""

    def __init__(self, binary: str, modules: Sequence[ExporterModule], work: Path):
        self.binary = binary
        self.config_path = work / "snmp.yml"
        # 0.21's snmp.yml is a map of module names (the `modules:` / `auths:` split is 0.23's)
        document = {m.name: m.config for m in modules}
        self.config_path.write_text(yaml.dump(document, Dumper=_PlainDumper, sort_keys=False))
        self.log_path = work / "snmp-exporter.log"
        self.port = free_tcp_port()
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Exporter:
        argv = [self.binary, f"--config.file={self.config_path}"]
        check = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"snmp.yml rejected by the exporter:\n{check.stdout}{check.stderr}")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*argv, f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_listening(self._process, self.port, "the exporter", timeout=20)
        except SystemExit as exc:
            self.__exit__()
            log = self.log_path.read_text()[-2000:]
            raise SystemExit(f"exporter did not start:\n{log}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def cpu(self) -> float:
        """CPU seconds of the exporter process so far."""
        return process_cpu(self.pid)


def check_scrape(
    device: str, module: ExporterModule, body: bytes, qkdtel_samples: Sequence[Any]
) -> None:
    """The exporter read the same table as the driver: same rows, peers and scalars."""
    metrics = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    ]
    names = {name for name, _, _ in metrics}
    missing = [s for s in module.scalars if s not in names]
    if missing:
        raise SystemExit(f"exporter, {device}: no {', '.join(missing)} in\n{body[:2000]!r}")
    rows = {
        labels[module.peer_column]
        for name, labels, _ in metrics
        if name == module.first_column and module.peer_column in labels
    }
    links = [s for s in qkdtel_samples if s.measurement == "qkd_link"]
    expected = {s.tags["peer"] for s in links}
    if len(links) != sum(1 for name, _, _ in metrics if name == module.first_column):
        raise SystemExit(
            f"exporter, {device}: {module.first_column} rows differ from the driver's "
            f"{len(links)}:\n{body[:2000]!r}"
        )
    if rows != expected:
        raise SystemExit(f"exporter, {device}: peers {sorted(rows)}, driver: {sorted(expected)}")


def packets_sent(body: bytes) -> float:
    """The exporter's `snmp_scrape_packets_sent` of one scrape: SNMP requests it took."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "snmp_scrape_packets_sent"
    )

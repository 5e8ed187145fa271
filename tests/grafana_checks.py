"""The dashboards under grafana/ as the tests read them: files, panels, variables, every InfluxQL
statement with where it sits, the unit and value mappings Grafana would apply to a column, the
template variables filled in as Grafana sends a query, and a query run against InfluxDB."""

from __future__ import annotations

import json
import re
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.fixtures_influxdb import InfluxServer
from tests.metrics_doc import load_contract

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_YAML = GRAFANA / "provisioning" / "datasources" / "qkdtel.yaml"
PROVIDER_YAML = GRAFANA / "provisioning" / "dashboards" / "qkdtel.yaml"
DATASOURCE_REF = {"type": "influxdb", "uid": "${datasource}"}
MEASUREMENTS = {
    "qkd_link",
    "qkd_module",
    "qkd_event",
    "qkdtel_device_status",
    "qkdtel_collector",
    "qkdtel_listener",
    "osa_channel",
    "osa_quantum_channel",
    "otdr_trace",
    "otdr_alarm",
    "optical_power",
    "optical_switch",
    "optical_switch_port",
    "optical_switch_event",
    "kme_key_store",
    "kme_event",
    "qrng",
    "encryptor",
    "encryptor_association",
    "encryptor_event",
    "qkd_app",
}


def contract_with_configured_tags() -> dict:
    """docs/metrics.md, each measurement also carrying the *configured tags* (node, domain):
    every point of a device carries them, and the dashboards filter by them."""
    contract = load_contract()
    configured = contract.pop("configured tags")
    for columns in contract.values():
        for name, column in configured.items():
            columns.setdefault(name, column)
    return contract


CONTRACT = contract_with_configured_tags()

# Grafana unit to show a documented unit in; `count` may also be left to Grafana's default.
GRAFANA_UNITS: dict[str, set[str | None]] = {
    "bit/s": {"bps"},
    "fraction": {"percentunit"},
    "SNU": {"suffix: SNU"},
    "dB": {"dB"},
    "°C": {"celsius"},
    "s": {"s"},
    "bits": {"decbits"},
    "nm": {"suffix: nm"},
    "count": {"short", "none", None},
}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


DASHBOARDS = {p.name: load(p) for p in DASHBOARD_FILES}


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel that shows data (rows only group them)."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def variables(dashboard: dict) -> list[dict]:
    return dashboard["templating"]["list"]


@dataclass(frozen=True)
class DashboardQuery:
    where: str  # for messages
    text: str
    interval: str  # the $__interval Grafana would use (the panel's minimum, or 1m)
    alias: str = ""


def queries(dashboard: dict) -> list[DashboardQuery]:
    """Every InfluxQL statement of a dashboard: panel targets, variables, annotations."""
    out = []
    for panel in panels(dashboard):
        for t in panel["targets"]:
            where = f"panel {panel['title']!r} target {t['refId']}"
            out.append(
                DashboardQuery(where, t["query"], panel.get("interval", "1m"), t.get("alias", ""))
            )
    for var in variables(dashboard):
        if var["type"] == "query":
            out.append(DashboardQuery(f"variable {var['name']!r}", var["query"], "1m"))
    for anno in dashboard["annotations"]["list"]:
        if anno["datasource"] == DATASOURCE_REF:
            out.append(
                DashboardQuery(f"annotation {anno['name']!r}", anno["target"]["query"], "1m")
            )
    return out


def provisioned_datasource() -> dict:
    (ds,) = yaml.safe_load(DATASOURCE_YAML.read_text(encoding="utf-8"))["datasources"]
    return ds


def effective_unit(panel: dict, column: str | None, ref_id: str) -> str | None:
    """The unit Grafana shows a query's column in: an override for it, else the default."""
    for override in panel["fieldConfig"]["overrides"]:
        matcher = override["matcher"]
        hit = (panel["type"] == "table" and matcher == {"id": "byName", "options": column}) or (
            matcher == {"id": "byFrameRefID", "options": ref_id}
        )
        units = [p["value"] for p in override["properties"] if p["id"] == "unit"]
        if hit and units:
            return units[0]
    return panel["fieldConfig"]["defaults"].get("unit")


def value_mappings(panel: dict, column: str | None) -> set[str] | None:
    """Values a panel maps for a column (override by name, else the defaults); None if none."""
    mappings = panel["fieldConfig"]["defaults"].get("mappings", [])
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"] == {"id": "byName", "options": column}:
            mappings = next(
                (p["value"] for p in override["properties"] if p["id"] == "mappings"), mappings
            )
    values = {v for m in mappings if m["type"] == "value" for v in m["options"]}
    return values or None


# One plausible value per template variable, as a NOC engineer would pick it.
PLAUSIBLE = {
    "node": "Quevedo",
    "link": "3+4",
    "vendor": "hwdu",
    "technology": "cv",
    "device": "quevedo-hwdu-4",
    "host": "noc-collector-1",
    "sink": "influxdb",
    "domain": "TID",
    "kme": "quevedo-kme",
    "switch": "quijote-oxc",
    "encryptor": "quevedo-enc-l2",
    "link_node": "Quevedo",
    "shard": "0",
}


def threshold_value(var: dict) -> str:
    """What Grafana puts in for a threshold variable: a constant's value or a custom's current."""
    if var["type"] == "constant":
        return var["query"]
    return var["current"]["value"]


THRESHOLD_TYPES = {"constant", "custom"}


def fill_in(
    query: str,
    interval: str,
    dashboard: dict,
    *,
    every: bool,
    resolve: Callable[[str], list[str]] | None = None,
) -> str:
    """The query as Grafana sends it: `every` puts every variable on All, else one value.

    A variable whose All has no custom value (`allValue` null) stands for the alternation of
    its values, as Grafana expands it: `resolve` runs the variable's own query for them."""
    defined = {v["name"]: v for v in variables(dashboard)}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "timeFilter":
            return "time > now() - 1h"
        if name in {"__interval", "interval"}:
            return interval
        if name not in defined:
            raise AssertionError(f"${name} is not a variable of the dashboard")
        var = defined[name]
        if var["type"] in THRESHOLD_TYPES:
            return threshold_value(var)
        if every and var["allValue"] is not None:
            return var["allValue"]
        if every:
            if resolve is None:
                raise AssertionError(f"${name} has no custom All value: pass `resolve`")
            found = resolve(fill_in(var["query"], "1m", dashboard, every=True, resolve=resolve))
            return "(" + "|".join(re.escape(v) for v in found) + ")"
        if name not in PLAUSIBLE:
            raise AssertionError(f"add a plausible value of ${name} to PLAUSIBLE")
        return "(" + re.escape(PLAUSIBLE[name]) + ")"  # Grafana's regex format of a multi-value

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, query)


def tag_values(influxdb: InfluxServer, db: str) -> Callable[[str], list[str]]:
    """What a `SHOW TAG VALUES` variable query returns on `db`: the values Grafana offers."""

    def resolve(query: str) -> list[str]:
        return sorted({row["value"] for row in influxdb.query(query, db)})

    return resolve


def run_query(influxdb: InfluxServer, query: str, db: str) -> tuple[str | None, int]:
    """InfluxDB's error for the query (None if it ran) and the number of rows it returned."""
    try:
        return None, len(influxdb.query(query, db))
    except RuntimeError as e:  # an error in the statement's result
        return str(e), 0
    except urllib.error.HTTPError as e:  # the statement did not parse
        return f"{e}: {e.read().decode(errors='replace').strip()}", 0

"""The Grafana dashboards under grafana/ stay honest.

- Structure: unique uids and titles, every panel on the `${datasource}` variable with raw
  InfluxQL targets, provisioning files that match the dashboards.
- Contract: every measurement, tag and field a query names is in docs/metrics.md, GROUP BY only
  uses tags, literals compared with enumerated tags/fields are documented values, value
  mappings colour every documented value, units shown match the documented units (fractions as
  `percentunit`), gaps are never painted over.
- Execution: every query, with its template variables filled in as Grafana would, runs against
  the real InfluxDB 1.6 of tests/fixtures_influxdb.py, in a database holding points of every
  measurement; InfluxDB must accept each one and, with every variable on "All", each one must
  return data.

No Grafana server is available to the tests (Debian does not package it): whether Grafana
renders the panels is not checked here. The helpers are in tests/grafana_checks.py (reading the
dashboards), tests/influxql_check.py (reading InfluxQL against the contract) and
tests/grafana_sample_data.py (the points queried).
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.fixtures_influxdb import InfluxServer
from tests.grafana_checks import (
    CONTRACT,
    DASHBOARDS,
    DATASOURCE_REF,
    GRAFANA,
    GRAFANA_UNITS,
    MEASUREMENTS,
    PROVIDER_YAML,
    THRESHOLD_TYPES,
    effective_unit,
    fill_in,
    panels,
    provisioned_datasource,
    queries,
    run_query,
    tag_values,
    threshold_value,
    value_mappings,
    variables,
)
from tests.grafana_sample_data import write_sample
from tests.influxql_check import (
    PASSTHROUGH,
    contract_problems,
    numeric_thresholds,
    read_query,
)
from tests.metrics_doc import load_contract


def test_the_contract_is_readable():
    assert set(CONTRACT) >= MEASUREMENTS
    for name in MEASUREMENTS:
        kinds = {c.kind for c in CONTRACT[name].values()}
        assert kinds == {"tag", "field"}, f"{name}: needs tags and fields, has {kinds}"
    assert CONTRACT["qkd_link"]["link_status"].values == {"active", "pending", "off", "failure"}
    assert "" in CONTRACT["qkdtel_device_status"]["error_class"].values


def test_dashboards_have_unique_uids_and_titles():
    uids = [d["uid"] for d in DASHBOARDS.values()]
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert sorted(uids) == sorted(set(uids)), uids
    assert sorted(titles) == sorted(set(titles)), titles
    assert {"qkdtel-overview", "qkdtel-module-detail", "qkdtel-collector-health"} <= set(uids)
    assert "qkdtel-link-detail" in uids


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_structure(name):
    d = DASHBOARDS[name]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]), d["uid"]
    assert d["title"] and d["description"]
    assert d["schemaVersion"] >= 39
    assert "qkdtel" in d["tags"]
    ds_var = variables(d)[0]
    assert (ds_var["name"], ds_var["type"], ds_var["query"]) == (
        "datasource",
        "datasource",
        "influxdb",
    )
    assert ds_var["current"]["value"] == provisioned_datasource()["uid"]
    for var in variables(d)[1:]:
        if var["type"] in THRESHOLD_TYPES:  # thresholds: numbers a NOC edits, not in queries
            assert var["description"], var["name"]
            float(threshold_value(var))
            continue
        assert var["type"] == "query", var["name"]
        assert var["datasource"] == DATASOURCE_REF, var["name"]
        # Grafana escapes regex characters (the `+` of link `3+4`) only in such variables.
        assert var["multi"] or var["includeAll"], var["name"]

    ids = [p["id"] for p in d["panels"]] + [p["id"] for p in panels(d) if p not in d["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    for panel in panels(d):
        title = panel.get("title")
        assert title and panel.get("description"), (
            f"{name}: panel {panel['id']} needs a title and description"
        )
        assert panel["datasource"] == DATASOURCE_REF, title
        assert panel["targets"], title
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for t in panel["targets"]:
            assert t.get("datasource", DATASOURCE_REF) == DATASOURCE_REF, title
            assert t["rawQuery"] is True and t["query"].strip(), title
    for anno in d["annotations"]["list"]:
        if not anno.get("builtIn"):
            assert anno["datasource"] == DATASOURCE_REF, anno["name"]
            assert anno["target"]["rawQuery"] and anno["target"]["query"], anno["name"]


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ('SELECT mean("qbr") FROM "qkd_link" WHERE $timeFilter', "'qbr' is not a documented"),
        ('SELECT mean("qber") FROM "qkd_links"', "measurement 'qkd_links'"),
        ('SELECT mean("qber") FROM "qkd_link" GROUP BY time(1m), "qber"', "a field, not a tag"),
        ('SELECT last("qber") FROM "qkd_link" WHERE "link_status" = \'up\'', "'up', not one"),
        ('SELECT last("up") FROM "qkdtel_device_status" WHERE "up" = \'false\'', "bool"),
        ('SELECT last("qber") FROM "qkd_link" WHERE "link" = 4', "compared with 4"),
        ('SHOW TAG VALUES FROM "qkd_link" WITH KEY = "qber"', "a field, not a tag"),
        ('SELECT "x" FROM (SELECT last("qber") AS "q" FROM "qkd_link")', "'x' is not"),
        ('DROP MEASUREMENT "qkd_link"', "only SELECT"),
        ('SELECT last("qber") FROM "qkd_link" GROUP BY "link" SLIMIT 5', "InfluxDB 3 has no"),
    ],
)
def test_the_contract_check_catches(query, complaint):
    problems = contract_problems(query, CONTRACT)
    assert any(complaint in p for p in problems), problems


def test_the_contract_check_accepts_a_documented_query():
    query = (
        'SELECT count("s") FROM (SELECT last("link_status") AS "s" FROM "autogen"."qkd_link" '
        'WHERE $timeFilter AND "link" =~ /^$link$/ AND "switched" = \'true\' GROUP BY "link", '
        '"node") WHERE "s" != \'failure\' AND "s" != $state'
    )
    assert contract_problems(query, CONTRACT) == []
    q = read_query(query)
    assert q.measurements == ["qkd_link"]
    assert q.group_by == ["link", "node"]
    assert q.aliases == {"s"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_queries_use_only_documented_names(name):
    problems = []
    for q in queries(DASHBOARDS[name]):
        problems += [f"{q.where}: {p}" for p in contract_problems(q.text, CONTRACT)]
        grouped = set(read_query(q.text).group_by)
        for tag in re.findall(r"\$tag_(\w+)", q.alias):
            if tag not in grouped:
                problems.append(
                    f"{q.where}: alias uses $tag_{tag} but the query does not GROUP BY it"
                )
    assert problems == []


def test_the_threshold_check_catches_a_number():
    query = 'SELECT count("q") FROM (SELECT last("qber") AS "q" FROM "qkd_link") WHERE "q" > 0.05'
    assert numeric_thresholds(query) == ["q > 0.05"]
    assert numeric_thresholds(query.replace("0.05", "$qber_dv_max")) == []


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_thresholds_are_variables(name):
    """A limit in a query is invisible to the NOC: it must be a dashboard variable."""
    found = [
        f"{q.where}: {t}" for q in queries(DASHBOARDS[name]) for t in numeric_thresholds(q.text)
    ]
    assert found == []


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_units_follow_the_contract(name):
    problems = []
    for panel in panels(DASHBOARDS[name]):
        config = [panel["fieldConfig"]["defaults"]] + [
            {p["id"]: p["value"] for p in o["properties"]}
            for o in panel["fieldConfig"]["overrides"]
        ]
        if any(c.get("unit") == "percent" for c in config):
            problems.append(f"{panel['title']!r}: unit `percent`, but fractions are stored 0..1")
        for t in panel["targets"]:
            q = read_query(t["query"])
            columns = {n: c for m in q.measurements for n, c in CONTRACT.get(m, {}).items()}
            for item in q.select:
                col = columns.get(item.field or "")
                if col is None or item.function not in PASSTHROUGH | {None}:
                    continue
                if col.unit not in GRAFANA_UNITS:
                    continue
                unit = effective_unit(panel, item.column, t["refId"])
                if unit not in GRAFANA_UNITS[col.unit]:
                    problems.append(
                        f"{panel['title']!r} {t['refId']}: {item.field} is in {col.unit}, shown as "
                        f"{unit!r} (want {sorted(map(str, GRAFANA_UNITS[col.unit]))})"
                    )
    assert problems == []


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_value_mappings_cover_every_documented_value(name):
    """A state docs/metrics.md adds (a new link_status, a new severity) gets a colour everywhere."""
    problems = []
    for panel in panels(DASHBOARDS[name]):
        for t in panel["targets"]:
            q = read_query(t["query"])
            columns = {n: c for m in q.measurements for n, c in CONTRACT.get(m, {}).items()}
            for item in q.select:
                col = columns.get(item.field or "")
                if col is None or col.values is None or item.function not in PASSTHROUGH | {None}:
                    continue
                mapped = value_mappings(panel, item.column)
                if mapped is not None and not col.values - {""} <= mapped:
                    problems.append(
                        f"{panel['title']!r}: no mapping for {item.field} = "
                        f"{sorted(col.values - {''} - mapped)}"
                    )
    assert problems == []


def test_every_error_class_is_counted():
    """error_class is a field, so each class has its own query: one per documented class."""
    dashboard = DASHBOARDS["qkdtel-collector-health.json"]
    documented = CONTRACT["qkdtel_device_status"]["error_class"].values - {""}
    counted = []
    for panel in panels(dashboard):
        classes = [
            literal.text.strip("'")
            for t in panel["targets"]
            for column, literal in read_query(t["query"]).comparisons
            if column == "error_class"
        ]
        if classes:
            counted.append(panel["title"])
            assert sorted(classes) == sorted(documented), panel["title"]
    assert len(counted) == 2, counted


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_gaps_are_not_painted_over(name):
    """Maintenance windows and outages are lost history: no panel may hide them."""
    problems = []
    for q in queries(DASHBOARDS[name]):
        r = read_query(q.text)
        if not r.group_by_time:
            continue
        counts_only = all(item.function == "count" for item in r.select)
        allowed = {"null", "0"} if counts_only else {"null"}
        if not r.fills or not set(r.fills) <= allowed:
            problems.append(f"{q.where}: GROUP BY time needs fill({' or '.join(sorted(allowed))})")
    for panel in panels(DASHBOARDS[name]):
        span = panel["fieldConfig"]["defaults"].get("custom", {}).get("spanNulls")
        if panel["type"] == "timeseries" and not (type(span) is int and span > 0):
            problems.append(
                f"{panel['title']!r}: spanNulls must be a threshold in ms, not {span!r}"
            )
        if panel["type"] == "state-timeline" and span is not False:
            problems.append(f"{panel['title']!r}: spanNulls must be false, not {span!r}")
    assert problems == []


def test_provisioning_matches_the_dashboards():
    ds = provisioned_datasource()
    assert ds["type"] == "influxdb" and ds["access"] == "proxy"
    assert ds["jsonData"]["version"] == "InfluxQL"
    provider = yaml.safe_load(PROVIDER_YAML.read_text(encoding="utf-8"))["providers"][0]
    assert provider["type"] == "file"
    settings = [ds["url"], ds["user"], ds["jsonData"]["dbName"], ds["secureJsonData"]["password"]]
    settings.append(provider["options"]["path"])
    readme = (GRAFANA / "README.md").read_text(encoding="utf-8")
    for value in settings:
        var = re.fullmatch(r"\$\{(QKDTEL_\w+)\}", value)
        assert var, f"{value!r}: set it from a QKDTEL_ environment variable"
        assert var.group(1) in readme, f"grafana/README.md does not explain {var.group(1)}"


# --------------------------------------------------------------------------- a real InfluxDB


@pytest.fixture
def sample_db(influxdb: InfluxServer, influx_db: str) -> str:
    """A fresh database on the shared influxd (tests/fixtures_influxdb.py) with `sample_points`."""
    write_sample(influxdb, influx_db)
    return influx_db


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_influxdb_runs_every_query(name, influxdb, sample_db):
    dashboard = DASHBOARDS[name]
    failures = []
    for q in queries(dashboard):
        for every in (True, False):
            resolve = tag_values(influxdb, sample_db)
            sent = fill_in(q.text, q.interval, dashboard, every=every, resolve=resolve)
            error, rows = run_query(influxdb, sent, sample_db)
            if error:
                failures.append(f"{q.where}: {sent!r} -> {error}")
            elif every and not rows:
                failures.append(f"{q.where}: no data with every variable on All: {sent!r}")
    assert failures == []


LOCATION_TAGS = ("domain", "node", "link")


def location_tags(measurement: str) -> set[str]:
    """Which of domain, site (`node`) and link the points of a measurement carry: its own tags,
    and the configured tags of docs/metrics.md when a device writes it (it has a `device` tag)."""
    columns = CONTRACT[measurement]
    own = {n for n, c in columns.items() if c.kind == "tag"}
    if "device" not in own:  # the collector's own measurements carry no configured tags
        own -= {"domain", "node"} - set(load_contract()[measurement])
    return own & set(LOCATION_TAGS)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboards_filter_by_domain_site_and_link(name):
    """Issue 13: every dashboard has variables for domain, site and link where its data has
    those tags, and every panel whose data carries one of them filters by one (the link detail
    picks the link by site, then shows both ends of it: by link only)."""
    dashboard = DASHBOARDS[name]
    names = {v["name"] for v in variables(dashboard)}
    problems = []
    for panel in panels(dashboard):
        for t in panel["targets"]:
            carried = set()
            for measurement in read_query(t["query"]).measurements:
                carried |= location_tags(measurement)
            problems += [
                f"{panel['title']!r}: its data has {tag}, the dashboard no ${tag}"
                for tag in sorted(carried - names)
            ]
            filtered = {tag for tag in carried if re.search(rf'"{tag}" =~ /\^\$\w+\$/', t["query"])}
            if carried and not filtered:
                problems.append(f"{panel['title']!r} {t['refId']}: filters by none of {carried}")
    assert problems == []

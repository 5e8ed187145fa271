"""The alert rules of grafana/provisioning/alerting/ do what their titles say.

- Structure: the Grafana unified alerting file format (query A on the provisioned data source,
  reduce B, threshold C), unique uids, every fault issue 13 names has a rule, the dashboards the
  rules link to exist, the change window's mute timing is the one the rules name.
- Contract: every measurement, tag and field a rule's query names is in docs/metrics.md, and
  thresholds live in the C expressions, not as numbers in the queries.
- Execution: each query runs on the real influxd of tests/fixtures_influxdb.py against the
  sample network of tests/grafana_sample_data.py, once with every fault present (the rule must
  fire, for exactly the faulty series) and once healthy (it must stay quiet; where the query
  then returns nothing, the rule must treat no data as OK). The reduce and threshold of each
  rule are evaluated by tests/grafana_alerts.py, since no Grafana can run here.
"""

from __future__ import annotations

import re

import pytest

from tests.fixtures_influxdb import InfluxServer
from tests.grafana_alerts import alert_rules, firing, load_alerting, rule_query
from tests.grafana_checks import CONTRACT, DASHBOARDS, PROVIDER_YAML, provisioned_datasource
from tests.grafana_sample_data import write_sample
from tests.influxql_check import contract_problems, numeric_thresholds

RULES = {r.uid: r for r in alert_rules()}

# The faults of issue 13 and which series of the faulty sample network each rule must fire for.
FIRES_FOR = {
    "qkdtel-qber-dv-high": [{"link": "8", "device": "quijano-toshiba-8"}],
    "qkdtel-excess-noise-cv-high": [{"link": "3+4", "device": "quijote-hwdu-34"}],
    # not quijote-hwdu-34 (a dark switched path) nor quevedo-idq-4 (in maintenance)
    "qkdtel-key-rate-zero": [{"link": "4", "device": "quevedo-hwdu-4"}],
    "qkdtel-key-stock-low": [{"slave_sae_id": "enc-quijote"}],
    "qkdtel-key-stock-emptying": [{"slave_sae_id": "enc-quijote"}],
    "qkdtel-fibre-loss-over-baseline": [{"link": "4", "wavelength": "1550"}],
    "qkdtel-fibre-power-drop": [{"device": "quevedo-pm", "channel": "1", "link": "4"}],
    "qkdtel-cross-connect-changed": [{"device": "quijote-oxc"}],
    "qkdtel-encryptor-classical-fallback": [{"device": "quevedo-enc-l2"}],
    "qkdtel-device-down": [{"device": "distrito-kms"}],
    "qkdtel-spool-growing": [{"host": "noc-collector-1", "sink": "influxdb"}],
}


def test_every_fault_has_a_rule():
    assert sorted(RULES) == sorted(FIRES_FOR)
    assert len(alert_rules()) == len(RULES), "duplicate rule uids"


def test_alert_file_structure():
    doc = load_alerting()
    assert doc["apiVersion"] == 1
    folder = PROVIDER_YAML.read_text(encoding="utf-8")
    dashboards = {d["uid"] for d in DASHBOARDS.values()}
    for group in doc["groups"]:
        assert group["orgId"] == 1 and re.fullmatch(r"\d+[smh]", group["interval"]), group
        assert f"folder: {group['folder']}" in folder, "rules go in the dashboards' folder"
    mutes = {m["name"] for m in doc["muteTimes"]}
    for rule in RULES.values():
        raw = rule.raw
        assert rule.datasource_uid == provisioned_datasource()["uid"], rule.uid
        assert re.fullmatch(r"[a-z0-9-]{1,40}", rule.uid), rule.uid
        assert re.fullmatch(r"\d+[smh]", raw["for"]), rule.uid
        assert raw["noDataState"] in {"OK", "NoData", "Alerting"}, rule.uid
        assert raw["labels"]["severity"] in {"critical", "major", "warning"}, rule.uid
        assert raw["annotations"]["summary"] and raw["annotations"]["description"], rule.uid
        assert raw["annotations"]["dashboardUid"] in dashboards, rule.uid
        window = raw["labels"].get("change_window")
        assert window is None or window in mutes, f"{rule.uid}: no mute timing {window}"
    assert any("change_window" in r.raw["labels"] for r in RULES.values())


@pytest.mark.parametrize("uid", sorted(RULES))
def test_rule_query_uses_only_documented_names(uid):
    rule = RULES[uid]
    assert contract_problems(rule.query, CONTRACT) == []
    assert numeric_thresholds(rule.query) == [], f"{uid}: put the threshold in expression C"
    assert "$timeFilter" in rule.query, f"{uid}: the query ignores the rule's time range"


@pytest.fixture(scope="module")
def networks(influxdb: InfluxServer) -> dict[str, str]:
    """Two databases on the shared influxd: the sample network with its faults, and healthy."""
    if not influxdb.running:
        influxdb.start()
    names = {}
    for state, healthy in (("faulty", False), ("healthy", True)):
        names[state] = f"grafana_alerts_{state}_{id(names)}"
        influxdb.create_database(names[state])
        write_sample(influxdb, names[state], healthy=healthy)
    return names


@pytest.mark.parametrize("uid", sorted(RULES))
def test_rule_fires_on_its_fault(uid, influxdb, networks):
    rule = RULES[uid]
    rows = influxdb.query(rule_query(rule), networks["faulty"])
    assert rows, f"{uid}: no data on the faulty network"
    fired = [dict(labels) for labels in firing(rule, rows)]
    for want in FIRES_FOR[uid]:
        assert any(want.items() <= f.items() for f in fired), f"{uid}: {want} not in {fired}"
    assert len(fired) == len(FIRES_FOR[uid]), f"{uid}: fired for {fired}"


@pytest.mark.parametrize("uid", sorted(RULES))
def test_rule_stays_quiet_when_healthy(uid, influxdb, networks):
    rule = RULES[uid]
    rows = influxdb.query(rule_query(rule), networks["healthy"])
    assert firing(rule, rows) == {}
    if not rows:  # an event that did not happen: no data must not alert by itself
        assert rule.no_data_state == "OK", f"{uid}: quiet network gives NoData, which alerts"

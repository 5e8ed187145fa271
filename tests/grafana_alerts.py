"""The alert rules of grafana/provisioning/alerting/ as the tests read them, and what Grafana does
with a rule's query result: the reduce (B) and threshold (C) expressions, evaluated per series.

Grafana itself cannot run here (Debian does not package it), so the two expression types the
rules use are implemented below as Grafana documents them; a rule of another shape is refused
rather than evaluated wrongly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import yaml

from tests.grafana_checks import GRAFANA
from tests.influxql_check import read_query

ALERTING_YAML = GRAFANA / "provisioning" / "alerting" / "qkdtel.yaml"


@dataclass(frozen=True)
class AlertRule:
    group: str
    uid: str
    title: str
    query: str  # InfluxQL of A, with $timeFilter and $__interval as Grafana fills them
    datasource_uid: str
    window_s: int  # A's relativeTimeRange.from
    interval_ms: int
    reducer: str  # B
    evaluator: str  # C
    params: tuple[float, ...]
    no_data_state: str
    raw: dict


def load_alerting() -> dict:
    return yaml.safe_load(ALERTING_YAML.read_text(encoding="utf-8"))


def read_rule(group: str, rule: dict) -> AlertRule:
    """One provisioned rule, checked to be the A (query) -> B (reduce) -> C (threshold) shape."""
    data = {d["refId"]: d for d in rule["data"]}
    a, b, c = data["A"], data["B"]["model"], data["C"]["model"]
    assert sorted(data) == ["A", "B", "C"] and rule["condition"] == "C", rule["uid"]
    assert (b["type"], b["expression"]) == ("reduce", "A"), rule["uid"]
    assert (c["type"], c["expression"]) == ("threshold", "B"), rule["uid"]
    assert data["B"]["datasourceUid"] == data["C"]["datasourceUid"] == "__expr__", rule["uid"]
    (condition,) = c["conditions"]
    return AlertRule(
        group=group,
        uid=rule["uid"],
        title=rule["title"],
        query=a["model"]["query"],
        datasource_uid=a["datasourceUid"],
        window_s=a["relativeTimeRange"]["from"],
        interval_ms=a["model"]["intervalMs"],
        reducer=b["reducer"],
        evaluator=condition["evaluator"]["type"],
        params=tuple(float(p) for p in condition["evaluator"]["params"]),
        no_data_state=rule["noDataState"],
        raw=rule,
    )


def alert_rules() -> list[AlertRule]:
    return [read_rule(g["name"], r) for g in load_alerting()["groups"] for r in g["rules"]]


def rule_query(rule: AlertRule, until_ns: int | None = None) -> str:
    """A's query as Grafana sends it: the rule's time range and interval filled in; `until_ns`
    evaluates it as Grafana did at that instant (the window ending there) rather than now."""
    if until_ns is None:
        window = f"time > now() - {rule.window_s}s"
    else:
        window = f"time > {until_ns}ns - {rule.window_s}s AND time <= {until_ns}ns"
    sent = rule.query.replace("$timeFilter", window)
    sent = sent.replace("$__interval", f"{rule.interval_ms}ms")
    assert "$" not in sent, f"{rule.uid}: a variable Grafana alerting does not fill: {sent}"
    return sent


def series(rule: AlertRule, rows: list[dict]) -> dict[tuple[tuple[str, str], ...], list[object]]:
    """The query's rows as Grafana's series: labels (the GROUP BY tags) -> values in time order."""
    tags = read_query(rule.query).group_by
    out: dict[tuple[tuple[str, str], ...], list[object]] = {}
    for row in sorted(rows, key=lambda r: r["time"]):
        (value,) = [v for k, v in row.items() if k != "time" and k not in tags]
        out.setdefault(tuple((t, row.get(t, "")) for t in tags), []).append(value)
    return out


def reduce(reducer: str, values: list[object]) -> float | None:
    """Grafana's reduce expression in `dropNN` mode: non-numbers dropped; None if none is left."""
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    numbers = [v for v in numbers if not math.isnan(v)]
    if reducer == "count":
        return float(len(numbers))
    if not numbers:
        return None
    reducers = {
        "last": lambda: numbers[-1],
        "mean": lambda: sum(numbers) / len(numbers),
        "min": lambda: min(numbers),
        "max": lambda: max(numbers),
        "sum": lambda: sum(numbers),
    }
    if reducer not in reducers:
        raise AssertionError(f"reducer {reducer!r} is not implemented by the test")
    return reducers[reducer]()


def threshold(evaluator: str, params: tuple[float, ...], value: float) -> bool:
    """Grafana's threshold expression: does `value` fire?"""
    if evaluator == "gt":
        return value > params[0]
    if evaluator == "lt":
        return value < params[0]
    if evaluator == "within_range":
        return params[0] < value < params[1]
    if evaluator == "outside_range":
        return value < params[0] or value > params[1]
    raise AssertionError(f"evaluator {evaluator!r} is not implemented by the test")


def firing(rule: AlertRule, rows: list[dict]) -> dict[tuple[tuple[str, str], ...], float]:
    """The series the rule fires for (after its `for`), with their reduced values."""
    out = {}
    for labels, values in series(rule, rows).items():
        value = reduce(rule.reducer, values)
        if value is not None and threshold(rule.evaluator, rule.params, value):
            out[labels] = value
    return out

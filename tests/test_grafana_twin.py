"""The dashboards and alert rules of grafana/ on real data: the MadQCI twin polled by the real
daemon into a real InfluxDB (tests/grafana_twin.py), not sample points.

One twin run serves the module, in three stages:
1. healthy: every family has reported; every alert rule stays quiet (the spool of the sink on a
   closed port aside, which is that rule's fault from the start), including key rate zero over
   a maintenance window of a module;
2. faults, on disjoint links so that they do not disturb each other, driven as an operator
   would (`qkdtel sims fault` on the twin's control API, `qkdtel switch move` over NETCONF):
   added loss on DV link 8 (QBER; OTDR and power meter) and on CV link R1 (excess noise), a
   break on link 6 with a key demand
   surge between its sites (key rate zero, key stock low and emptying, classical fallback), a
   device taken down, a cross-connect moved; each rule fires for exactly its faulty series;
3. every panel's, variable's and annotation's query of every dashboard returns data, for each
   field it shows.

The reduce and threshold of the rules are evaluated by tests/grafana_alerts.py (no Grafana can
run here, see that module).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

import pytest

from tests.fixtures_influxdb import InfluxServer
from tests.grafana_alerts import AlertRule, alert_rules, firing, rule_query
from tests.grafana_checks import DASHBOARDS, fill_in, panels, queries, tag_values
from tests.grafana_twin import (
    DEAD_SINK,
    LIVE_SINK,
    SPEED,
    TwinRun,
    sims_fault,
    switch,
    twin_run,
    wait_for,
)
from tests.influxql_check import read_query

pytestmark = pytest.mark.timeout(900)

RULES = {r.uid: r for r in alert_rules()}

QBER_LINK = "8"
"""A DV link (Toshiba, O-band) with an OTDR and a power meter: added loss raises its QBER and
shows on both instruments."""
QBER_LOSS_DB = 15.0
"""Enough for the QBER to pass 5 % (the model adds 0.2 % a dB), below a break (20 dB): the link
still makes key, so key rate zero must not fire for it."""
BREAK_LINK, BREAK_SITES = "6", ("Concepcion", "Distrito")
"""A link whose sites share no other quantum channel: broken, their key stock only drains."""
SURGE_BPS = 5_000_000.0
"""Key demand between the broken link's sites, far above what the stock holds for long."""
FALLBACK_ENCRYPTOR = "enc-l2-concepcion-distrito"
CV_LINK, CV_LOSS_DB = "R1", 12.0
"""The remote AIT CV link: 12 dB more loss multiplies its input-referred excess noise by ~8
(0.012 -> ~0.1 SNU, over the 0.05 threshold) while it still makes some key."""
CV_PAIR = [
    {"device": "kme-montegancedo", "slave_sae_id": "SAE-MONCLOA"},
    {"device": "kme-moncloa", "slave_sae_id": "SAE-MONTEGANCEDO"},
]
"""Its key managers: the key rate cut to 0.4 % falls below their demand, so the stock drains."""
DOWN_DEVICE = "osa-quijote-l3"
"""An instrument nothing else depends on."""
SWITCH = "sw-quevedo"


def at_twin_speed(rule: AlertRule) -> AlertRule:
    """The rule as it reads the accelerated twin: the KME driver measures a stock's drain per
    real second, so a time to empty in the data is SPEED times shorter than in the network's
    time; "empty within the hour" is within 3600 / SPEED real seconds. Other rules compare
    values that do not scale with time."""
    if rule.uid != "qkdtel-key-stock-emptying":
        return rule
    return dataclasses.replace(rule, params=tuple(p / SPEED for p in rule.params))


def fired(rule: AlertRule, run: TwinRun, until_ns: int | None = None) -> list[dict[str, str]]:
    """The label sets the rule fires for on the twin's data now (or at `until_ns`)."""
    rows = run.query(rule_query(rule, until_ns))
    return [dict(labels) for labels in firing(rule, rows)]


@pytest.fixture(scope="module")
def twin(influxdb: InfluxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwinRun]:
    if not influxdb.running:
        influxdb.start()
    db = "grafana_twin"
    influxdb.query(f'DROP DATABASE "{db}"')
    influxdb.create_database(db)
    with twin_run(tmp_path_factory.mktemp("twin"), influxdb, db) as run:
        yield run


# --------------------------------------------------------------------------- 1. healthy


@pytest.mark.parametrize("uid", sorted(RULES))
def test_rule_quiet_on_the_healthy_twin(uid, twin):
    found = fired(at_twin_speed(RULES[uid]), twin)
    if uid == "qkdtel-spool-growing":  # its fault (a sink on a closed port) runs from the start
        found = [f for f in found if f["sink"] != DEAD_SINK]
    assert found == [], f"{uid} fires on the healthy twin: {found}"


def maintenance_point(run: TwinRun) -> dict | None:
    """The latest point of a direct channel (the rule's kind) whose module reports maintenance
    (link_status off)."""
    rows = run.query(
        'SELECT last("secret_key_rate_bps"), "link_status" FROM "qkd_link" WHERE '
        "\"link_status\" = 'off' AND \"switched\" = 'false' "
        'GROUP BY "device", "link", "channel", "direction"'
    )
    return rows[0] if rows else None


def test_key_rate_zero_quiet_in_a_maintenance_window(twin):
    """A module in maintenance reports no key: evaluated at that instant, the rule stays quiet
    for it, while the same query without its maintenance filter would fire."""
    point = wait_for("a maintenance window of some module", lambda: maintenance_point(twin), 300)
    rule = RULES["qkdtel-key-rate-zero"]
    series = {k: point[k] for k in ("device", "link", "channel", "direction")}
    assert point["last"] < 1, point
    at = point["time"]
    assert not [f for f in fired(rule, twin, at) if series.items() <= f.items()]
    unfiltered = re.sub(r"AND \"link_status\" != 'off' ", "", rule.query)
    assert unfiltered != rule.query
    naive = dataclasses.replace(rule, query=unfiltered)
    assert [f for f in fired(naive, twin, at) if series.items() <= f.items()], (
        "the maintenance point does not make the unfiltered rule fire: the test shows nothing"
    )


# --------------------------------------------------------------------------- 2. faults


@pytest.fixture(scope="module")
def faulty(twin: TwinRun) -> TwinRun:
    """The twin with every fault of the module docstring injected."""
    sims_fault(twin, "--link", QBER_LINK, "--add-loss", f"{QBER_LOSS_DB:g}", "--kind", "bend")
    sims_fault(twin, "--link", BREAK_LINK, "--add-loss", "30", "--kind", "break")
    sims_fault(twin, "--link", CV_LINK, "--add-loss", f"{CV_LOSS_DB:g}", "--kind", "bend")
    sims_fault(twin, "--consumption", f"{BREAK_SITES[0]}:{BREAK_SITES[1]}={SURGE_BPS:g}")
    sims_fault(twin, "--device", DOWN_DEVICE, "--down")
    for command in SWITCH_CHANGES:
        switch(twin, command[0], SWITCH, *command[1:])
    wait_for(
        f"the faults' events ({', '.join(EVENTS)})",
        lambda: set(EVENTS) <= twin.measurements(),
        timeout=180,
    )
    return twin


EVENTS = ("otdr_alarm", "optical_switch_event", "kme_event", "encryptor_event", "qkd_event")
"""Measurements written only when something happens: all of them once the faults show."""


SWITCH_CHANGES = [
    ("disconnect", "4"),  # hwdu-quevedo-l4-in -> l4-out: frees l4-out
    ("move", "1", "6"),  # l3-in -> l4-out: link 3 joined to link 4, the path 3+4 lit
    ("move", "1", "7"),  # back to hwdu-quevedo-l3-out
    ("connect", "4", "6"),  # and the module on link 4 again: the direct channels lit again
]
"""A cross-connect change (sw-quevedo: ingress 1..4 = l3, l4, hwdu-quevedo-l3, hwdu-quevedo-l4;
egress 5..8 the same) made and undone, so that only the change itself remains to alert on."""

# What each rule must fire for on the faulty twin (each of these must be matched by a fired label
# set, as a subset of its labels), and what it may fire for besides: consequences the one model
# makes real. The loss on link 8 cuts its key rate thirty-fold, below the key demand between
# Quevedo and Quijano, so their stock drains and their encryptor may fall back too.
LINK_8_PAIR = [
    {"device": "kme-quevedo", "slave_sae_id": "SAE-QUIJANO"},
    {"device": "kme-quijano", "slave_sae_id": "SAE-QUEVEDO"},
]
FIRES_FOR: dict[str, list[dict[str, str]]] = {
    "qkdtel-qber-dv-high": [{"link": QBER_LINK}],
    "qkdtel-excess-noise-cv-high": [{"link": CV_LINK}],
    "qkdtel-key-rate-zero": [{"link": BREAK_LINK}],
    "qkdtel-key-stock-low": [{"device": "kme-concepcion", "slave_sae_id": "SAE-DISTRITO"}],
    "qkdtel-key-stock-emptying": [{"device": "kme-concepcion", "slave_sae_id": "SAE-DISTRITO"}],
    "qkdtel-fibre-loss-over-baseline": [{"link": QBER_LINK}],
    "qkdtel-fibre-power-drop": [{"device": "pm-quijano-l8", "link": QBER_LINK}],
    "qkdtel-cross-connect-changed": [{"device": SWITCH}],
    "qkdtel-encryptor-classical-fallback": [{"device": FALLBACK_ENCRYPTOR}],
    "qkdtel-device-down": [{"device": DOWN_DEVICE}],
    "qkdtel-spool-growing": [{"sink": DEAD_SINK}],
}
MAY_FIRE_FOR: dict[str, list[dict[str, str]]] = {
    "qkdtel-key-stock-low": [
        {"device": "kme-distrito", "slave_sae_id": "SAE-CONCEPCION"},
        *LINK_8_PAIR,
        *CV_PAIR,
    ],
    "qkdtel-key-stock-emptying": [
        {"device": "kme-distrito", "slave_sae_id": "SAE-CONCEPCION"},
        *LINK_8_PAIR,
        *CV_PAIR,
    ],
    "qkdtel-encryptor-classical-fallback": [{"device": "enc-l2-quevedo-quijano"}],
}


def explained(found: list[dict[str, str]], want: list[dict], may: list[dict]) -> list[str]:
    """What is wrong between the fired label sets and the wanted ones (empty: all good)."""
    problems = [
        f"not fired for {w}" for w in want if not any(w.items() <= f.items() for f in found)
    ]
    problems += [
        f"fired for {f}" for f in found if not any(w.items() <= f.items() for w in want + may)
    ]
    return problems


@pytest.mark.parametrize("uid", sorted(FIRES_FOR))
def test_rule_fires_on_its_fault(uid, faulty):
    rule, want, may = at_twin_speed(RULES[uid]), FIRES_FOR[uid], MAY_FIRE_FOR.get(uid, [])
    wait_for(f"{uid} to fire", lambda: not explained(fired(rule, faulty), want, may), 180, 2)
    assert explained(fired(rule, faulty), want, may) == []
    if uid == "qkdtel-spool-growing":
        assert not [f for f in fired(rule, faulty) if f["sink"] == LIVE_SINK]


# --------------------------------------------------------------------------- 3. dashboards


# Fields of a raw event table that only some notifications carry and that no fault of this
# module is sure to make a module send in time: the CV excess-noise alarm trap (sent when a
# module's own threshold is crossed) and the key-store-empty traps of the modules reporting a fill
# (a module's own store empties only after a long outage).
SOMETIMES_CARRIED = {("qkd_event", "excess_noise_snu"), ("qkd_event", "key_store_fill_ratio")}


def fields_without_data(query: str, rows: list[dict]) -> list[str]:
    """Columns of the result (GROUP BY tags aside) that no row has a value for."""
    read = read_query(query)
    columns = {k for row in rows for k in row} - set(read.group_by) - {"time"}
    optional = {f for m, f in SOMETIMES_CARRIED if m in read.measurements}
    return sorted(c for c in columns - optional if all(row.get(c) is None for row in rows))


def counted_over(query: str) -> str | None:
    """The subquery a count of problems counts over (`SELECT count(x) FROM (...) WHERE x > $t`)."""
    found = re.search(r"FROM \((SELECT .*)\) WHERE", query)
    return found.group(1) if found else None


def by_error_class(panel: dict) -> bool:
    """A panel with one query per documented error class (a healthy twin has only some)."""
    return all('"error_class" = \'' in t["query"] for t in panel["targets"])


def panel_problems(panel: dict, dashboard: dict, run: TwinRun) -> list[str]:
    """Why the panel's queries do not show data on the twin (empty: they do)."""
    resolve = tag_values(run.influx, run.db)
    problems, answered = [], False
    for t in panel["targets"]:
        where = f"panel {panel['title']!r} {t['refId']}"
        sent = fill_in(
            t["query"], panel.get("interval", "1m"), dashboard, every=True, resolve=resolve
        )
        rows = run.query(sent)
        answered |= bool(rows)
        inner = counted_over(sent)
        if not rows and inner and panel["fieldConfig"]["defaults"].get("noValue") == "0":
            sent, rows = inner, run.query(inner)  # no problem to count: the stat shows 0
        if not rows:
            if not by_error_class(panel):
                problems.append(f"{where}: no data: {sent}")
        elif empty := fields_without_data(sent, rows):
            problems.append(f"{where}: no value of {empty}: {sent}")
    if by_error_class(panel) and not answered:
        problems.append(f"panel {panel['title']!r}: no poll error of any class")
    return problems


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_dashboard_query_returns_data_on_the_twin(name, faulty):
    """Every panel's query shows data for each field it shows, and every variable and annotation
    query returns something, with every variable on All (counts of problems may be 0: then
    what they count over must have data)."""
    dashboard = DASHBOARDS[name]
    problems = [p for panel in panels(dashboard) for p in panel_problems(panel, dashboard, faulty)]
    resolve = tag_values(faulty.influx, faulty.db)
    for q in queries(dashboard):
        if q.where.startswith(("variable", "annotation")):
            sent = fill_in(q.text, q.interval, dashboard, every=True, resolve=resolve)
            if not faulty.query(sent):
                problems.append(f"{q.where}: no data: {sent}")
    assert not problems, "\n".join(problems)

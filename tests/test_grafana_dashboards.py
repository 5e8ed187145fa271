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
renders the panels is not checked here.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.fixtures_influxdb import InfluxServer
from tests.metrics_doc import Column, Contract, load_contract

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_YAML = GRAFANA / "provisioning" / "datasources" / "qkdtel.yaml"
PROVIDER_YAML = GRAFANA / "provisioning" / "dashboards" / "qkdtel.yaml"
DATASOURCE_REF = {"type": "influxdb", "uid": "${datasource}"}
MEASUREMENTS = {"qkd_link", "qkd_module", "qkd_event", "qkdtel_device_status", "qkdtel_collector"}


# --------------------------------------------------------------------------- the contract

CONTRACT = load_contract()

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


# --------------------------------------------------------------------------- InfluxQL reading

_TOKEN = re.compile(
    r"""
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<ident>"(?:[^"\\]|\\.)*")
    | (?P<var>\$\{\w+(?::\w+)?\}|\$\w+)
    | (?P<cast>::\w+)
    | (?P<number>\d+(?:\.\d+)?(?:ns|ms|us|u|µ|s|m|h|d|w)?)
    | (?P<word>[A-Za-z_]\w*)
    | (?P<op>=~|!~|!=|<>|<=|>=|[-=<>+*/%,().;])
    """,
    re.VERBOSE,
)
_REGEX_LITERAL = re.compile(r"/(?:[^/\\]|\\.)*/")
KEYWORDS = {
    "select", "from", "where", "and", "or", "not", "group", "by", "order", "asc", "desc",
    "limit", "slimit", "offset", "soffset", "fill", "null", "none", "previous", "linear", "as",
    "show", "tag", "values", "key", "with", "in", "true", "false", "tz", "time", "into",
}  # fmt: skip
GROUP_BY_END = {"fill", "order", "limit", "slimit", "offset", "soffset", "tz"}
PASSTHROUGH = {"mean", "median", "mode", "last", "first", "min", "max", "percentile"}


@dataclass(frozen=True)
class Token:
    kind: str  # string, ident, var, cast, number, word, op, regex
    text: str

    @property
    def name(self) -> str:
        """An identifier's name, unquoted."""
        if self.kind == "ident":
            return re.sub(r"\\(.)", r"\1", self.text[1:-1])
        return self.text

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words


def tokenize(query: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(query):
        if query[pos].isspace():
            pos += 1
            continue
        if tokens and tokens[-1].text in {"=~", "!~"}:
            match = _REGEX_LITERAL.match(query, pos)
            if match:
                tokens.append(Token("regex", match.group()))
                pos = match.end()
                continue
        match = _TOKEN.match(query, pos)
        if not match:
            raise ValueError(f"cannot read InfluxQL at {query[pos:]!r}")
        tokens.append(Token(match.lastgroup or "", match.group()))
        pos = match.end()
    return tokens


@dataclass(frozen=True)
class SelectItem:
    """One item of the outermost SELECT list."""

    function: str | None  # None: a bare field; "" for anything more complex than f(field)
    field: str | None
    alias: str | None

    @property
    def column(self) -> str | None:
        return self.alias or (self.field if self.function is None else self.function)


@dataclass
class Query:
    """What one InfluxQL statement names."""

    text: str
    tokens: list[Token]
    measurements: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    aliases: set[str] = field(default_factory=set)
    group_by: list[str] = field(default_factory=list)
    group_by_time: bool = False
    fills: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # SHOW TAG VALUES ... WITH KEY
    comparisons: list[tuple[str, Token]] = field(default_factory=list)
    select: list[SelectItem] = field(default_factory=list)


def read_query(text: str) -> Query:
    """Walk one statement and note every name it uses, and where."""
    q = Query(text, tokenize(text))
    toks = q.tokens
    depth = 0
    group_depth: int | None = None
    after_key = False
    i = 0
    while i < len(toks):
        tok = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
            if group_depth is not None and depth < group_depth:
                group_depth = None
        elif tok.is_word("from") and nxt and nxt.text != "(":
            i += 1
            while i + 2 < len(toks) and toks[i + 1].text == "." and toks[i + 2].kind != "op":
                i += 2  # "db"."rp"."measurement": the measurement is the last part
            q.measurements.append(toks[i].name)
        elif tok.is_word("as") and nxt:
            q.aliases.add(nxt.name)
            i += 1
        elif tok.is_word("group") and nxt and nxt.is_word("by"):
            group_depth = depth
            i += 1
        elif tok.is_word("key"):
            after_key = True
        elif tok.is_word("fill") and i + 2 < len(toks):
            q.fills.append(toks[i + 2].text.lower())
            group_depth = None
            i += 3
        elif tok.kind == "word" and tok.text.lower() in KEYWORDS:
            if group_depth is not None and depth == group_depth:
                if tok.is_word("time"):
                    q.group_by_time = True
                elif tok.text.lower() in GROUP_BY_END:
                    group_depth = None
        elif tok.kind in {"word", "ident"} and not (nxt and nxt.text == "(" and tok.kind == "word"):
            q.references.append(tok.name)
            if group_depth is not None:
                q.group_by.append(tok.name)
            if after_key:
                q.keys.append(tok.name)
            literal = toks[i + 2] if i + 2 < len(toks) else None
            if nxt and nxt.text in {"=", "!=", "<>"} and literal:
                q.comparisons.append((tok.name, literal))
        if tok.is_word("where"):
            after_key = False
        i += 1
    q.select = _select_list(toks)
    return q


def _select_list(toks: list[Token]) -> list[SelectItem]:
    """The items between the first SELECT and its FROM, at the outermost level."""
    if not toks or not toks[0].is_word("select"):
        return []
    items: list[list[Token]] = [[]]
    depth = 0
    for tok in toks[1:]:
        depth += {"(": 1, ")": -1}.get(tok.text, 0)
        if depth == 0 and tok.is_word("from"):
            break
        if depth == 0 and tok.text == ",":
            items.append([])
        else:
            items[-1].append(tok)
    out = []
    for item in items:
        alias = None
        if len(item) >= 2 and item[-2].is_word("as"):
            alias, item = item[-1].name, item[:-2]
        texts = [t.text for t in item]
        if len(item) == 1 and item[0].kind in {"ident", "word"}:
            out.append(SelectItem(None, item[0].name, alias))
        elif len(item) == 4 and texts[1] == "(" and texts[3] == ")" and item[2].kind == "ident":
            out.append(SelectItem(item[0].text.lower(), item[2].name, alias))
        else:
            out.append(SelectItem("", None, alias))
    return out


def contract_problems(text: str, contract: Contract) -> list[str]:
    """Everything in one query that docs/metrics.md (or InfluxDB 3's InfluxQL) does not back."""
    q = read_query(text)
    first = " ".join(t.text.lower() for t in q.tokens[:3])
    if not (first.startswith("select") or first == "show tag values"):
        return [f"only SELECT and SHOW TAG VALUES belong in a dashboard: {text!r}"]
    if any(t.text == ";" for t in q.tokens):
        return [f"one statement per query: {text!r}"]
    if not q.measurements:
        return [f"no measurement named: {text!r}"]
    problems = [
        f"InfluxDB 3 has no {t.text.upper()}: {text!r}"
        for t in q.tokens
        if t.is_word("slimit", "soffset", "tz")
    ]
    columns: dict[str, Column] = {}
    for m in q.measurements:
        if m not in contract:
            problems.append(f"measurement {m!r} is not in docs/metrics.md")
        columns.update(contract.get(m, {}))
    where = "/".join(q.measurements)
    for name in q.references:
        if name not in columns and name not in q.aliases:
            problems.append(f"{name!r} is not a documented tag or field of {where}")
    for name in q.group_by + q.keys:
        if name in columns and columns[name].kind != "tag":
            problems.append(f"GROUP BY / WITH KEY {name!r}: a field, not a tag, of {where}")
    for name, literal in q.comparisons:
        col = columns.get(name)
        if col is None:
            continue
        want = {"bool": "word", "int": "number", "float": "number"}.get(col.type, "string")
        if literal.kind not in (want, "var"):
            problems.append(f"{name!r} ({col.kind} {col.type}) compared with {literal.text}")
        elif col.values and literal.kind == "string" and literal.text[1:-1] not in col.values:
            problems.append(
                f"{name!r} compared with {literal.text}, not one of its documented values "
                f"{sorted(col.values)}"
            )
    return problems


# --------------------------------------------------------------------------- the dashboards


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


def provisioned_datasource() -> dict:
    (ds,) = yaml.safe_load(DATASOURCE_YAML.read_text(encoding="utf-8"))["datasources"]
    return ds


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


@dataclass(frozen=True)
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, object]
    time_s: int


def line_protocol(p: Point) -> str:
    """One line, each field typed as docs/metrics.md says (so type errors show up in queries)."""
    columns = CONTRACT[p.measurement]

    def esc(s: str) -> str:
        return re.sub(r"([ ,=])", r"\\\1", s)

    def value(name: str, v: object) -> str:
        col = columns[name]
        assert col.kind == "field", f"{p.measurement}.{name} is not a documented field"
        if col.type == "float":
            return repr(float(v))  # type: ignore[arg-type]
        if col.type == "int":
            return f"{int(v)}i"  # type: ignore[call-overload]
        if col.type == "bool":
            return "true" if v else "false"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    for tag in p.tags:
        assert columns[tag].kind == "tag", f"{p.measurement}.{tag} is not a documented tag"
    tags = "".join(f",{esc(k)}={esc(v)}" for k, v in sorted(p.tags.items()))
    fields = ",".join(f"{esc(k)}={value(k, v)}" for k, v in p.fields.items())
    return f"{p.measurement}{tags} {fields} {p.time_s}"


# Modules of the fixture, after MadQCI: (tags, fields per poll k=0 newest .. 9 oldest).
LINK_MODULES = [
    (
        {
            "device": "quevedo-idq-4",
            "node": "Quevedo",
            "peer": "Norte",
            "link": "4",
            "vendor": "idq",
            "technology": "dv",
            "protocol": "cow",
            "band": "O",
            "direction": "tx",
            "switched": "false",
        },
        lambda k: {
            "link_status": "active",
            "vendor_state": "QKD_RUNNING",
            "key_generating": True,
            "secret_key_rate_bps": 1400.0 + 10 * k,
            "raw_key_rate_bps": 9.1e5,
            "sifted_key_rate_bps": 4.4e5,
            "secret_key_bits_total": 9_000_000 - 84_000 * k,
            "qber": 0.042,
            "visibility": 0.985,
            "channel_loss_db": 6.1,
            "wavelength_nm": 1310.0,
            "key_store_fill_ratio": 0.6,
            "key_store_bits": 6_000_000,
        },
    ),
    (
        {
            "device": "quevedo-hwdu-4",
            "node": "Quevedo",
            "peer": "Norte",
            "link": "4",
            "vendor": "hwdu",
            "technology": "cv",
            "protocol": "gg02",
            "band": "C",
            "channel": "37",
            "direction": "tx",
            "switched": "false",
        },
        lambda k: {
            "link_status": "active",
            "vendor_state": "WORKING",
            "key_generating": True,
            "secret_key_rate_bps": 8700.0,
            "excess_noise_snu": 0.011 + 0.001 * (k % 3),
            "snr_db": -12.4,
            "transmittance": 0.25,
            "channel_loss_db": 6.0,
            "wavelength_nm": 1547.72,
            "key_store_fill_ratio": 0.9,
            "key_store_bits": 9_000_000,
        },
    ),
    (
        {
            "device": "quijote-hwdu-34",
            "node": "Quijote",
            "peer": "Norte",
            "link": "3+4",
            "vendor": "hwdu",
            "technology": "cv",
            "protocol": "gg02",
            "band": "C",
            "channel": "38",
            "direction": "tx",
            "switched": "true",
        },
        lambda k: {
            "link_status": "failure",
            "vendor_state": "ALARM",
            "key_generating": False,
            "secret_key_rate_bps": 0.0,
            "excess_noise_snu": 0.08,
            "snr_db": -19.5,
            "transmittance": 0.05,
            "channel_loss_db": 13.0,
            "wavelength_nm": 1546.92,
            "key_store_fill_ratio": 0.0,
            "key_store_bits": 0,
        },
    ),
    (
        {
            "device": "quijano-toshiba-8",
            "node": "Quijano",
            "peer": "Quevedo",
            "link": "8",
            "vendor": "toshiba",
            "technology": "dv",
            "protocol": "bb84_decoy",
            "band": "O",
            "direction": "tx",
            "switched": "false",
        },
        lambda k: {
            "link_status": "active",
            "vendor_state": "RUNNING",
            "key_generating": True,
            "secret_key_rate_bps": 37200.0,
            "raw_key_rate_bps": 2.1e6,
            "sifted_key_rate_bps": 1.0e6,
            "secret_key_bits_total": 50_000_000 - 2_232_000 * k,
            "qber": 0.061 if k < 3 else 0.03,
            "channel_loss_db": 11.8,
            "wavelength_nm": 1310.0,
            "key_store_fill_ratio": 0.3,
            "key_store_bits": 3_000_000,
        },
    ),
]
TEMPERATURES = {
    "dv": {"detector_temperature_c": -40.0, "laser_temperature_c": 25.0},
    "cv": {"receiver_temperature_c": 31.0, "laser_temperature_c": 25.0},
}
EVENTS = [
    (
        "quevedo-idq-4",
        "qber_threshold",
        "major",
        {"notification": "cerbQberThresholdAlarm", "source": "10.4.0.11", "qber": 0.061},
    ),
    (
        "quijote-hwdu-34",
        "link_down",
        "critical",
        {"notification": "hwcvChannelDown", "source": "10.3.0.21", "vendor_state": "ALARM"},
    ),
    (
        "quevedo-hwdu-4",
        "excess_noise_threshold",
        "warning",
        {"notification": "hwcvExcessNoiseAlarm", "source": "10.4.0.21", "excess_noise_snu": 0.05},
    ),
    (
        "quijano-toshiba-8",
        "key_store_empty",
        "warning",
        {"notification": "tqkdKeyBufferEmpty", "source": "10.8.0.31", "key_store_bits": 0},
    ),
    (
        "quijano-toshiba-8",
        "link_up",
        "info",
        {"notification": "tqkdLinkStatusChange", "source": "10.8.0.31", "vendor_state": "RUNNING"},
    ),
]
ERROR_CLASSES = ["timeout", "auth", "no_such_object", "refused", "malformed", "error", "internal"]


def sample_points(now: int) -> list[Point]:
    """Ten polls a minute apart of four QKD modules, a failing device and one collector."""
    points = []
    polls = [(k, now - 30 - 60 * k) for k in range(10)]
    for tags, fields in LINK_MODULES:
        module_tags = {t: tags[t] for t in ("device", "node", "vendor", "technology")}
        for k, t in polls:
            link = fields(k)
            points.append(Point("qkd_link", tags, link, t))
            points.append(
                Point(
                    "qkd_module",
                    module_tags,
                    {
                        **TEMPERATURES[tags["technology"]],
                        "enclosure_temperature_c": 22.0 + k / 10,
                        "board_temperature_c": 40.0,
                        "links": 1,
                        "links_generating": int(link["key_generating"]),
                    },
                    t,
                )
            )
            status = {
                "up": True,
                "error_class": "",
                "error": "",
                "poll_duration_s": 0.4,
                "samples": 3,
                "consecutive_failures": 0,
                "backoff_s": 0.0,
            }
            points.append(
                Point(
                    "qkdtel_device_status",
                    {"device": tags["device"], "driver": "qkd_snmp"},
                    status,
                    t,
                )
            )
    for k, t in polls:  # a key manager that has been failing for ten minutes, every error class
        status = {
            "up": False,
            "error_class": ERROR_CLASSES[k % 7],
            "error": "no answer in 5.0 s",
            "poll_duration_s": 5.0,
            "samples": 0,
            "consecutive_failures": 10 - k,
            "backoff_s": 60.0,
        }
        points.append(
            Point(
                "qkdtel_device_status", {"device": "distrito-kms", "driver": "etsi014"}, status, t
            )
        )
        collector = {
            "points_collected": 1000 * (10 - k),
            "points_written": 990 * (10 - k),
            "points_pending": 10,
            "points_rejected": 0,
            "points_dropped": 5 * (10 - k),
            "write_errors": 10 - k,
            "write_latency_s": 0.02,
            "polls_running": 1,
        }
        points.append(
            Point("qkdtel_collector", {"sink": "influxdb", "host": "noc-collector-1"}, collector, t)
        )
    link_tags = {tags["device"]: tags for tags, _ in LINK_MODULES}
    for i, (device, event, severity, fields) in enumerate(EVENTS):
        tags = {k: link_tags[device][k] for k in ("device", "node", "peer", "link", "vendor")}
        points.append(
            Point(
                "qkd_event", {**tags, "event": event, "severity": severity}, fields, now - 100 * i
            )
        )
    return points


# One plausible value per template variable, as a NOC engineer would pick it.
PLAUSIBLE = {
    "node": "Quevedo",
    "link": "3+4",
    "vendor": "hwdu",
    "technology": "cv",
    "device": "quevedo-hwdu-4",
    "host": "noc-collector-1",
    "sink": "influxdb",
}


def fill_in(query: str, interval: str, dashboard: dict, *, every: bool) -> str:
    """The query as Grafana sends it: `every` puts every variable on All, else one value."""
    defined = {v["name"]: v for v in variables(dashboard)}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "timeFilter":
            return "time > now() - 1h"
        if name in {"__interval", "interval"}:
            return interval
        if name not in defined:
            raise AssertionError(f"${name} is not a variable of the dashboard")
        if every:
            return defined[name]["allValue"]
        if name not in PLAUSIBLE:
            raise AssertionError(f"add a plausible value of ${name} to PLAUSIBLE")
        return "(" + re.escape(PLAUSIBLE[name]) + ")"  # Grafana's regex format of a multi-value

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, query)


@pytest.fixture
def sample_db(influxdb: InfluxServer, influx_db: str) -> str:
    """A fresh database on the shared influxd (tests/fixtures_influxdb.py) with `sample_points`."""
    body = "\n".join(line_protocol(p) for p in sample_points(int(time.time())))
    url = f"{influxdb.url}/write?{urllib.parse.urlencode({'db': influx_db, 'precision': 's'})}"
    with urllib.request.urlopen(urllib.request.Request(url, data=body.encode()), timeout=10) as r:
        assert r.status == 204  # every point accepted
    return influx_db


def run(influxdb: InfluxServer, query: str, db: str) -> tuple[str | None, int]:
    """InfluxDB's error for the query (None if it ran) and the number of rows it returned."""
    try:
        return None, len(influxdb.query(query, db))
    except RuntimeError as e:  # an error in the statement's result
        return str(e), 0
    except urllib.error.HTTPError as e:  # the statement did not parse
        return f"{e}: {e.read().decode(errors='replace').strip()}", 0


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_influxdb_runs_every_query(name, influxdb, sample_db):
    dashboard = DASHBOARDS[name]
    failures = []
    for q in queries(dashboard):
        for every in (True, False):
            sent = fill_in(q.text, q.interval, dashboard, every=every)
            error, rows = run(influxdb, sent, sample_db)
            if error:
                failures.append(f"{q.where}: {sent!r} -> {error}")
            elif every and not rows:
                failures.append(f"{q.where}: no data with every variable on All: {sent!r}")
    assert failures == []

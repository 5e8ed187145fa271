"""InfluxQL as the dashboards write it, read just far enough to check it against docs/metrics.md.

`read_query` tokenizes a statement and collects its measurements, the names it references, its
GROUP BY / WITH KEY tags, its select items and the literals compared with a name;
`contract_problems` lists everything in it that the metrics contract (or InfluxDB 3's InfluxQL)
does not back. Not a full InfluxQL parser: what a dashboard query needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tests.metrics_doc import Column, Contract

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
            while i + 2 < len(toks) and toks[i + 1].text == "," and toks[i + 2].kind == "ident":
                i += 2  # FROM "a", "b": several measurements
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


COMPARISON_OPS = {"<", ">", "<=", ">=", "=", "!=", "<>"}


def numeric_thresholds(text: str) -> list[str]:
    """Comparisons of a column with a number other than 0 (`"q" > 0.05`): a limit written into
    the query, where a NOC cannot see or change it; it belongs in a dashboard variable or an
    alert rule's threshold expression. Comparing with 0 asks "any at all?", not a limit."""
    toks = tokenize(text)
    return [
        f"{a.name} {op.text} {n.text}"
        for a, op, n in zip(toks, toks[1:], toks[2:], strict=False)
        if a.kind in {"ident", "word"} and op.text in COMPARISON_OPS and n.kind == "number"
        if float(n.text) != 0
    ]

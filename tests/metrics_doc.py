"""docs/metrics.md read as data: the `## <measurement>` tables, for the tests that hold the
drivers (tests/test_metrics_contract.py) and the dashboards (tests/test_grafana_dashboards.py)
to that page.

The reading is strict: a table row whose name or kind it cannot read is an error, not a row
passed over, so a typo on the page cannot quietly take a name out of the contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

METRICS_MD = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
FIELD_TYPES = ("float", "int", "bool", "string")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Column:
    """One row of a measurement's table in docs/metrics.md."""

    kind: str  # "tag" or "field"
    type: str  # float, int, bool or string for fields; "string" for tags
    unit: str  # the unit/values cell as written

    @property
    def written(self) -> str:
        """The kind cell as the page writes it: `tag`, or `field <type>`."""
        return "tag" if self.kind == "tag" else f"field {self.type}"

    @property
    def values(self) -> frozenset[str] | None:
        """The documented values when the cell enumerates them (`active, pending, ...`), as
        written (`""` is the empty string)."""
        if "," not in self.unit:
            return None
        return frozenset(v.strip().strip('"') for v in self.unit.split(","))


Contract = dict[str, dict[str, Column]]


def parse_contract(text: str) -> Contract:
    """Measurement -> column name -> Column, from the `## <measurement>` tables (sections
    without a table are left out)."""
    contract: Contract = {}
    columns: dict[str, Column] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            columns = contract.setdefault(line[3:].strip(), {})
            continue
        if columns is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "name" or not cells[0].strip("-: "):
            continue
        name, kind, unit = cells[0], cells[1].split(), cells[2]
        if not _NAME.match(name):
            raise ValueError(f"docs/metrics.md: {name!r} is not a measurement column name")
        if kind == ["tag"]:
            columns[name] = Column("tag", "string", unit)
        elif len(kind) == 2 and kind[0] == "field" and kind[1] in FIELD_TYPES:
            columns[name] = Column("field", kind[1], unit)
        else:
            raise ValueError(f"docs/metrics.md: cannot read the kind of {name!r}: {cells[1]!r}")
    return {m: cols for m, cols in contract.items() if cols}


def load_contract() -> Contract:
    """docs/metrics.md, parsed."""
    return parse_contract(METRICS_MD.read_text(encoding="utf-8"))

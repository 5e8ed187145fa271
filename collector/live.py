"""The live view of `qkdtel run --live`: per-link key rate and QBER as points arrive.

It observes the samples the collector spools (it never queries the store), so what it shows
is exactly what is being collected.

Why the layout is computed here rather than left to rich: a table wider than the terminal is
squeezed by rich column by column, which cuts numbers to "0.0…" and wraps rows. The view
instead fits any terminal from 80x24 up: columns are dropped by priority until the rest fit
whole (a number is never cut; only names may end in "…"), rows that need attention (link not
active, QBER high, device down) come first, and the other rows are paged, a page every
PAGE_SECONDS. Output that is not a terminal gets every column and every row, unsqueezed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from qkdtel.output import print_unsqueezed
from qkdtel.sdk import Sample

if TYPE_CHECKING:
    from qkdtel.daemon import Collector

QBER_HIGH = 0.05
"""QBER above which a DV link is shown among those needing attention (alarm level in MadQCI's
NOC; a BB84 link aborts key distillation at ~11 %)."""

PAGE_SECONDS = 5.0
"""How long each page of the rows that fit is shown before the next."""

CHROME_LINES = 5
"""Lines that are not rows: title, header, the rule under it, the bottom rule, the footer."""


@dataclass
class _LinkRow:
    tags: dict[str, str]
    fields: dict[str, object]
    seen: float


@dataclass(frozen=True)
class _Column:
    """One column: its heading, how a row fills it, its priority (lowest dropped first when
    the terminal is narrow) and whether its text may be shortened (names only)."""

    heading: str
    cell: Callable[[_LinkRow, float, bool], str]
    priority: int
    right: bool = False
    shrinks: bool = False


def _rate(bps: object) -> str:
    if not isinstance(bps, int | float):
        return "-"
    for unit, scale in (("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.2f} {unit}"
    return f"{bps:.0f} bit/s"


def _number(value: object, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, float) else "-"


def _status(row: _LinkRow, down: bool) -> str:
    return "down" if down else str(row.fields.get("link_status", "?"))


COLUMNS = (
    _Column("link", lambda r, _n, _d: r.tags.get("link", "?"), 9),
    _Column("status", lambda r, _n, d: _status(r, d), 9),
    _Column("key rate", lambda r, _n, _d: _rate(r.fields.get("secret_key_rate_bps")), 8, True),
    _Column("QBER %", lambda r, _n, _d: _number(_percent(r.fields.get("qber")), ".2f"), 8, True),
    _Column(
        "node → peer",
        lambda r, _n, _d: f"{r.tags.get('node', '?')} → {r.tags.get('peer', '?')}",
        7,
        shrinks=True,
    ),
    _Column(
        "noise SNU", lambda r, _n, _d: _number(r.fields.get("excess_noise_snu"), ".4f"), 6, True
    ),
    _Column("SNR dB", lambda r, _n, _d: _number(r.fields.get("snr_db"), ".1f"), 5, True),
    _Column("age", lambda r, n, _d: f"{n - r.seen:.0f} s", 4, True),
    _Column("device", lambda r, _n, _d: r.tags.get("device", "?"), 3, shrinks=True),
    _Column("ch", lambda r, _n, _d: r.tags.get("channel", r.tags.get("band", "")), 2),
    _Column(
        "tech",
        lambda r, _n, _d: f"{r.tags.get('technology', '?')}/{r.tags.get('vendor', '?')}",
        1,
    ),
)

COLUMN_GAP = 3
"""Characters between two columns: a cell's padding either side of the (blank) rule."""

_MIN_SHRUNK = 8
"""Narrowest a name column is shortened to (then it is dropped instead)."""


def _percent(qber: object) -> object:
    return qber * 100 if isinstance(qber, float) else None


class LiveLinkTable:
    """Keeps the latest `qkd_link` point of every link and the devices' up/down state."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, ...], _LinkRow] = {}
        self.devices_up: dict[str, bool] = {}
        self.points = 0

    def __call__(self, samples: list[Sample]) -> None:
        now = time.monotonic()
        self.points += len(samples)
        for s in samples:
            if s.measurement == "qkd_link":
                key = tuple(s.tags.get(k, "") for k in ("link", "device", "peer", "channel"))
                self.links[key] = _LinkRow(dict(s.tags), dict(s.fields), now)
            elif s.measurement == "qkdtel_device_status":
                self.devices_up[s.tags["device"]] = bool(s.fields.get("up"))

    def _down(self, row: _LinkRow) -> bool:
        return self.devices_up.get(row.tags.get("device", ""), True) is False

    def needs_attention(self, row: _LinkRow) -> bool:
        """Not active, QBER high, or its device down: what an operator looks at first."""
        qber = row.fields.get("qber")
        return (
            self._down(row)
            or row.fields.get("link_status") != "active"
            or (isinstance(qber, float) and qber > QBER_HIGH)
        )

    def ordered(self) -> list[_LinkRow]:
        """Rows needing attention first, then by link number (as text: `10` after `9`)."""
        rows = sorted(self.links.items(), key=lambda kv: (len(kv[0][0]), kv[0]))
        return [r for _, r in rows if self.needs_attention(r)] + [
            r for _, r in rows if not self.needs_attention(r)
        ]

    def title(self) -> str:
        up = sum(self.devices_up.values())
        return f"QKD links: {up}/{len(self.devices_up)} up, {self.points} points spooled"

    def render(
        self, width: int | None = None, height: int | None = None, now: float | None = None
    ) -> RenderableType:
        """The view for a terminal of `width` x `height` (None: every column, every row)."""
        now = time.monotonic() if now is None else now
        rows = self.ordered()
        cells = [[c.cell(r, now, self._down(r)) for c in COLUMNS] for r in rows]
        columns = _fit(cells, width)
        shown, footer = _page(rows, height, now, self.needs_attention)
        table = Table(
            title=self.title(),
            box=box.SIMPLE_HEAD,
            show_edge=False,
            header_style="bold",
            pad_edge=False,
            title_justify="left",
        )
        for index, col_width in columns:
            column = COLUMNS[index]
            table.add_column(
                column.heading,
                justify="right" if column.right else "left",
                no_wrap=True,
                overflow="ellipsis" if column.shrinks else "crop",
                width=col_width,
            )
        for position in shown:
            row = rows[position]
            style = _row_style(row, self._down(row), self.needs_attention(row))
            table.add_row(*(cells[position][i] for i, _ in columns), style=style)
        if not footer:
            return table
        return Group(table, Text(footer, style="dim", no_wrap=True, overflow="ellipsis"))


def _row_style(row: _LinkRow, down: bool, attention: bool) -> str:
    if down or row.fields.get("link_status") in {"failure", "off"}:
        return "red"
    return "yellow" if attention else ""


def _fit(cells: list[list[str]], width: int | None) -> list[tuple[int, int]]:
    """(column index, width) of the columns shown, in COLUMNS order: every column at its
    content's width, then the lowest priorities dropped (a name column first shortened, never
    below _MIN_SHRUNK) until the table fits `width`."""
    natural = [
        max([len(c.heading), *(len(row[i]) for row in cells)]) for i, c in enumerate(COLUMNS)
    ]
    shown = dict(enumerate(natural))
    if width is None:
        return list(shown.items())

    def total() -> int:
        return sum(shown.values()) + COLUMN_GAP * (len(shown) - 1)

    for index in sorted(shown, key=lambda i: COLUMNS[i].priority):
        if total() <= width:
            break
        if COLUMNS[index].shrinks:
            shown[index] = max(_MIN_SHRUNK, shown[index] - (total() - width))
            if total() <= width:
                break
        del shown[index]
    return sorted(shown.items())


def _page(
    rows: list[_LinkRow], height: int | None, now: float, attention: Callable[[_LinkRow], bool]
) -> tuple[list[int], str]:
    """Which rows are shown in `height` lines, and the footer that says what is not: the rows
    needing attention stay on every page, the others take turns (a page per PAGE_SECONDS)."""
    if height is None or len(rows) <= height - CHROME_LINES:
        return list(range(len(rows))), ""
    room = max(1, height - CHROME_LINES)
    pinned = [i for i, r in enumerate(rows) if attention(r)][:room]
    others = [i for i in range(len(rows)) if i not in set(pinned)]
    free = room - len(pinned)
    if not free or not others:
        hidden = len(rows) - len(pinned)
        return pinned, f"{len(pinned)} needing attention shown, {hidden} more rows: enlarge"
    pages = -(-len(others) // free)
    page = int(now // PAGE_SECONDS) % pages
    part = others[page * free : (page + 1) * free]
    footer = (
        f"page {page + 1}/{pages}, next in {PAGE_SECONDS:g} s: rows {part[0] + 1}-{part[-1] + 1}"
        f" of {len(rows)}; {len(pinned)} needing attention on every page"
    )
    return pinned + part, footer


async def run_with_live_table(
    collector: Collector, view: LiveLinkTable, console: Console, duration: float | None
) -> None:
    """Run the daemon while redrawing `view` (an observer of `collector`) twice a second, at
    the terminal's size; not a terminal: the whole table once, at the end, unsqueezed."""
    if not console.is_terminal:
        await collector.run(duration=duration)
        print_unsqueezed(console, view.render())
        return

    def at_size() -> RenderableType:
        return view.render(console.size.width, console.size.height)

    with Live(get_renderable=at_size, console=console, refresh_per_second=2):
        await collector.run(duration=duration)

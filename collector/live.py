"""The live view of `qkdtel run --live`: per-link key rate and QBER as points arrive.

It observes the samples the collector spools (it never queries the store), so what it shows
is exactly what is being collected.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table

from qkdtel.sdk import Sample

if TYPE_CHECKING:
    from qkdtel.daemon import Collector


@dataclass
class _LinkRow:
    tags: dict[str, str]
    fields: dict[str, object]
    seen: float


def _rate(bps: object) -> str:
    if not isinstance(bps, int | float):
        return "-"
    for unit, scale in (("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.2f} {unit}"
    return f"{bps:.0f} bit/s"


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

    def render(self) -> Table:
        up = sum(self.devices_up.values())
        table = Table(
            title=f"QKD links: {up}/{len(self.devices_up)} up, {self.points} points spooled",
            header_style="bold",
        )
        for column in (
            "link",
            "node → peer",
            "device",
            "tech",
            "ch",
            "status",
            "secret key rate",
            "QBER",
            "excess noise (SNU)",
            "SNR (dB)",
            "age",
        ):
            table.add_column(
                column,
                justify="right"
                if column in {"secret key rate", "QBER", "excess noise (SNU)", "SNR (dB)", "age"}
                else "left",
            )
        now = time.monotonic()
        for key in sorted(self.links, key=lambda k: (len(k[0]), k)):
            row = self.links[key]
            t, f = row.tags, row.fields
            qber = f.get("qber")
            noise, snr = f.get("excess_noise_snu"), f.get("snr_db")
            status = str(f.get("link_status", "?"))
            style = {"active": "green", "pending": "yellow"}.get(status, "red")
            table.add_row(
                t.get("link", "?"),
                f"{t.get('node', '?')} → {t.get('peer', '?')}",
                t.get("device", "?"),
                f"{t.get('technology', '?')}/{t.get('vendor', '?')}",
                t.get("channel", t.get("band", "")),
                f"[{style}]{status}[/]",
                _rate(f.get("secret_key_rate_bps")),
                f"{qber * 100:.2f} %" if isinstance(qber, float) else "-",
                f"{noise:.4f}" if isinstance(noise, float) else "-",
                f"{snr:.1f}" if isinstance(snr, float) else "-",
                f"{now - row.seen:.0f} s",
            )
        return table


async def run_with_live_table(
    collector: Collector, view: LiveLinkTable, console: Console, duration: float | None
) -> None:
    """Run the daemon while redrawing `view` (an observer of `collector`) twice a second."""
    with Live(view.render(), console=console, refresh_per_second=2) as live:
        task = asyncio.create_task(collector.run(duration=duration))
        while not task.done():
            live.update(view.render())
            await asyncio.wait({task}, timeout=0.5)
        live.update(view.render())
        task.result()

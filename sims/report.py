"""`qkdtel report`: what the collector stored, as a short report a newcomer can read.

    qkdtel report -c qkdtel.yaml [--since 1h | --start ISO [--end ISO]] [--out DIR]
                  [--faults FILE] [--link ID] [--no-instruments]

Reads the configuration's InfluxDB 1.x sink (InfluxQL over HTTP) for a time range and writes
`report.md` (PNGs beside it) and `report.html` (the same, images inlined: one file to mail):
- per link, the secret key rate of every quantum channel over time, and its QBER (DV) or excess
  noise (CV), one panel per link as in the published MadQCI figures, the published long-run
  means drawn beside the measured series;
- a table of every channel's measured mean against the published one;
- a link's spectrum: a sweep of the configured OSA taken now through `qkdtel.lab.OsaSession`
  (the stored per-channel points when no analyser answers);
- an OTDR trace: an acquisition of the configured OTDR now (`qkdtel.lab.OtdrSession`), its
  events marked, over the commissioning baseline the collector saved, with the alarms;
- the key stock of every SAE pair per node (ETSI GS QKD 014 status points);
- the faults injected (`--faults`, a JSON list the demo writes) and the OTDR alarms and QKD
  events stored in the range.
A section whose data is missing says so in words: no empty figure, no crash.

`qkdtel demo` calls `write_report` at its end; the command does the same for any stored range.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from markdown_it import MarkdownIt
from pydantic import TypeAdapter, ValidationError
from rich.console import Console

from qkdtel.config import ConfigError, InfluxV1Sink, LoadedConfig, load_config
from qkdtel.drivers.osa.options import OsaOptions
from qkdtel.drivers.otdr.options import OtdrOptions
from qkdtel.lab import BaselineStore, OsaSession, OtdrSession, PollError, Thresholds, compare
from qkdtel.lab_plots import plot_otdr, plot_spectrum
from qkdtel.sdk import Duration
from qkdtel.sims.influxd import influxql
from qkdtel.sims.report_plots import Marker, Panel, Series, plot_panels
from qkdtel.sims.topology import Channel, Topology, load_topology

EXIT_OK, EXIT_USAGE = 0, 2
BUCKETS = 120
"""Time buckets per series: enough to show temperature swings and gaps, few enough to read."""

Query = Callable[[str], list[dict[str, Any]]]
"""An InfluxQL query on the report's database: rows as `influxql` returns them."""


# -- what the report is asked ----------------------------------------------------------------


@dataclass(frozen=True)
class InjectedFault:
    """A fault put into the simulated network, and when (wall clock, ns)."""

    at_ns: int
    what: str

    def as_json(self) -> dict[str, Any]:
        return {"at_ns": self.at_ns, "what": self.what}


@dataclass(frozen=True)
class OsaTarget:
    """An analyser to sweep at report time: the collector's configuration of it."""

    name: str
    options: OsaOptions


@dataclass(frozen=True)
class OtdrTarget:
    """An OTDR to acquire with at report time: the collector's configuration of it."""

    name: str
    options: OtdrOptions


@dataclass(frozen=True)
class ReportRequest:
    """Everything a report is made from."""

    query: Query
    start_ns: int
    end_ns: int
    out_dir: Path
    osa: OsaTarget | None = None
    otdr: OtdrTarget | None = None
    faults: Sequence[InjectedFault] = ()
    note: str = ""
    topology: Topology = field(default_factory=lambda: load_topology(None))
    bucket_s: int = 1
    """Width of the time buckets of the figures (`write_report` sets it from the data)."""

    @property
    def where(self) -> str:
        return f"time >= {self.start_ns} AND time <= {self.end_ns}"

    @property
    def receivers(self) -> str:
        """`qkd_link` points of the range from each channel's receiving module. Not those of
        SD-QKD nodes (tagged `module`): they repeat their modules' own links."""
        return f"{self.where} AND \"direction\" = 'rx' AND \"module\" = ''"

    @property
    def bucket(self) -> str:
        return f"{self.bucket_s}s"

    def centre_ns(self, bucket_start_ns: int) -> int:
        """Where a bucket's mean is drawn: its middle (at its start, the points after a fault
        in the bucket it falls in would be drawn before it)."""
        return bucket_start_ns + self.bucket_s * 500_000_000

    @property
    def markers(self) -> list[Marker]:
        return [Marker(f.at_ns, f.what) for f in self.faults]

    def plot(self, panels: Sequence[Panel], name: str, title: str) -> None:
        """Draw `panels` into `out_dir/name` over the report's range, its faults marked: every
        figure shares the time axis, so a fault lines up across them."""
        plot_panels(
            panels,
            self.out_dir / name,
            title=title,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            markers=self.markers,
        )


# -- published figures -----------------------------------------------------------------------

ChannelKey = tuple[str, str, str]
"""(link, receiving module, ITU channel or "" in the O-band): one direction of one channel,
as the `qkd_link` points of its receiving end (`direction` = rx) are tagged."""


def channel_key(channel: Channel) -> ChannelKey:
    """The tags a channel's receiver puts on its points (`ChannelKey`)."""
    itu = str(channel.itu) if channel.itu and channel.band == "C" else ""
    return (channel.link, channel.bob, itu)


def published_channels(topology: Topology) -> dict[ChannelKey, Channel]:
    """Every quantum channel of the topology by the tags its receiver's points carry."""
    return {channel_key(c): c for c in topology.channels}


def canonical_key(published: dict[ChannelKey, Channel], key: ChannelKey) -> ChannelKey:
    """`key` as the topology has it: a module that reports no ITU channel (the AIT ones) is
    the receiver of the one channel of its link, if the topology has only one."""
    if key in published:
        return key
    same_end = [k for k in published if k[:2] == key[:2]]
    return same_end[0] if len(same_end) == 1 else key


# -- the report ------------------------------------------------------------------------------


def write_report(request: ReportRequest) -> Path:
    """Write report.md, its PNGs and report.html into `request.out_dir`; the HTML's path."""
    out = request.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # a figure of an earlier report must not pass for this one's
        old.unlink()
    lines = [
        "# MadQCI twin: what the collector stored",
        "",
        f"From {_utc(request.start_ns)} to {_utc(request.end_ns)} "
        f"({(request.end_ns - request.start_ns) / 60e9:.1f} minutes, wall clock).",
    ]
    if request.note:
        lines += ["", request.note]
    request = replace(request, bucket_s=_bucket_s(request))
    links = _link_series(request)
    for section in (
        _key_rate_section(request, links),
        _quality_section(request, links),
        _table_section(request),
        _spectrum_section(request),
        _otdr_section(request),
        _key_stock_section(request),
        _faults_section(request),
    ):
        lines += ["", *section]
    markdown = "\n".join(lines) + "\n"
    (out / "report.md").write_text(markdown, encoding="utf-8")
    html = out / "report.html"
    html.write_text(to_html(markdown, out), encoding="utf-8")
    return html


def _bucket_s(request: ReportRequest) -> int:
    """Seconds per bucket: the range over `BUCKETS`, but at least two poll periods (the median
    time between a channel's points), so that a bucket is seldom empty where polls arrived and
    a gap in the figures is a gap in the data."""
    gaps = sorted(
        row["elapsed"]
        for row in request.query(
            'SELECT elapsed("secret_key_rate_bps", 1ms) FROM "qkd_link" '
            f'WHERE {request.where} GROUP BY "device", "link", "channel", "direction" LIMIT 10'
        )
    )
    period_s = gaps[len(gaps) // 2] / 1000 if gaps else 0.0
    span_s = (request.end_ns - request.start_ns) / 1e9
    return max(1, math.ceil(max(span_s / BUCKETS, 2 * period_s)))


@dataclass
class _ChannelSeries:
    """One quantum channel (one direction) as its receiver reported it, bucketed."""

    key: ChannelKey
    technology: str
    label: str
    times_ns: list[int] = field(default_factory=list)
    skr: list[float] = field(default_factory=list)
    qber: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)


def _link_series(request: ReportRequest) -> dict[str, list[_ChannelSeries]]:
    """Per link, its channels' bucketed means (NaN where nothing arrived)."""
    rows = request.query(
        'SELECT mean("secret_key_rate_bps") AS skr, mean("qber") AS qber, '
        'mean("excess_noise_snu") AS noise FROM "qkd_link" '
        f"WHERE {request.receivers} "
        f'GROUP BY time({request.bucket}), "link", "device", "channel", "band", '
        '"technology", "node", "peer" fill(null)'
    )
    published = published_channels(request.topology)
    series: dict[ChannelKey, _ChannelSeries] = {}
    for row in rows:
        key = canonical_key(published, (row["link"], row["device"], row["channel"]))
        if key not in series:
            band = _band(row, published.get(key))
            label = f"{row['peer']}→{row['node']} {band} ({row['technology'].upper()})"
            series[key] = _ChannelSeries(key, row["technology"], label)
        s = series[key]
        s.times_ns.append(request.centre_ns(row["time"]))
        for name, values in (("skr", s.skr), ("qber", s.qber), ("noise", s.noise)):
            values.append(math.nan if row[name] is None else float(row[name]))
    by_link: dict[str, list[_ChannelSeries]] = defaultdict(list)
    for key in sorted(series, key=_link_order):
        by_link[key[0]].append(series[key])
    return dict(by_link)


def _link_order(key: ChannelKey) -> tuple:
    """Links 1..9 in number order, then the switched paths, then the others (R1)."""
    link = key[0]
    return (0 if link.isdigit() else 1 if "+" in link else 2, len(link), link, key[1:])


def _key_rate_section(request: ReportRequest, links: dict[str, list[_ChannelSeries]]) -> list[str]:
    lines = ["## Secret key rate per link"]
    if not links:
        return [*lines, "", "No `qkd_link` point arrived in this range: no key rate to show."]
    published = published_channels(request.topology)
    panels = []
    for link, channels in links.items():
        series = tuple(
            Series(
                c.label,
                np.array(c.times_ns),
                np.array(c.skr) / 1000,
                _published_skr(published.get(c.key)),
            )
            for c in channels
        )
        panels.append(Panel(f"link {link}", "kbit/s", series, log=_wide(series)))
    request.plot(
        panels, "key_rate.png", "Secret key rate per link (solid: measured; dashed: published mean)"
    )
    return [
        *lines,
        "",
        "Every quantum channel and direction as its receiving module reports it, "
        f"averaged over {request.bucket} buckets (gaps: nothing arrived, e.g. maintenance); "
        "dashed, the published long-run mean of the same channel; red, an injected fault.",
        "",
        "![secret key rate per link](key_rate.png)",
    ]


def _wide(series: Iterable[Series]) -> bool:
    """The series' positive values span more than a factor 30: a log axis shows them all
    (link 5: CV 0.09 kbit/s beside DV 1040 kbit/s)."""
    values = [v for s in series for v in s.values if v > 0]
    return bool(values) and max(values) / min(values) > 30


def _published_skr(channel: Channel | None) -> float | None:
    return channel.skr_kbps if channel else None


def _quality_section(request: ReportRequest, links: dict[str, list[_ChannelSeries]]) -> list[str]:
    """QBER of the DV channels, excess noise of the CV ones, one panel per link."""
    published = published_channels(request.topology)
    lines = ["## QBER (DV) and excess noise (CV) per link"]
    figures = (
        ("dv", "qber", "QBER (%)", 100.0, "qber.png", "QBER of the DV channels"),
        ("cv", "noise", "excess noise (mSNU)", 1000.0, "excess_noise.png", "excess noise (CV)"),
    )
    for technology, attribute, ylabel, scale, name, title in figures:
        panels = []
        for link, channels in links.items():
            series = tuple(
                Series(
                    c.label,
                    np.array(c.times_ns),
                    np.array(getattr(c, attribute)) * scale,
                    _published_quality(published.get(c.key), technology),
                )
                for c in channels
                if c.technology == technology
                and not all(math.isnan(v) for v in getattr(c, attribute))
            )
            if series:
                panels.append(Panel(f"link {link}", ylabel, series))
        lines.append("")
        if not panels:
            lines.append(f"No {title} arrived in this range.")
            continue
        request.plot(panels, name, f"{title} (solid: measured; dashed: published mean)")
        lines.append(f"![{title}]({name})")
    return lines


def _published_quality(channel: Channel | None, technology: str) -> float | None:
    if channel is None:
        return None
    return channel.qber_percent if technology == "dv" else channel.excess_noise_msnu


def _table_section(request: ReportRequest) -> list[str]:
    """Every channel's measured means beside the published ones; published channels that sent
    nothing are listed too (a missing link is a finding, not an omission)."""
    rows = request.query(
        'SELECT count("secret_key_rate_bps") AS n, mean("secret_key_rate_bps") AS skr, '
        'mean("qber") AS qber, mean("excess_noise_snu") AS noise, '
        'last("link_status") AS status FROM "qkd_link" '
        f"WHERE {request.receivers} "
        'GROUP BY "link", "device", "channel", "band", "node", "peer"'
    )
    published = published_channels(request.topology)
    measured = {canonical_key(published, (r["link"], r["device"], r["channel"])): r for r in rows}
    table = []
    for key in sorted({*measured, *published}, key=_link_order):
        table.append(_table_row(key, measured.get(key), published.get(key)))
    lines = [
        "## Measured against published, per link",
        "",
        "Means over the range of what each channel's receiver reported; published: the "
        "long-run means of the MadQCI publications (DOMAIN.md); state: the last ETSI GS QKD "
        "015 link state reported (a switched path whose cross-connects are not in place is "
        "`pending`: dark, no key).",
        "",
    ]
    header = ["link", "channel", "points", "SKR measured (kbit/s)", "SKR published (kbit/s)"]
    header += ["measured / published", "QBER measured", "QBER published", "excess noise (mSNU)"]
    header += ["state"]
    return [*lines, *_markdown_table(header, table)]


def _table_row(key: ChannelKey, row: dict[str, Any] | None, channel: Channel | None) -> list[str]:
    link, device, _ = key
    band = _band(row or {}, channel)
    where = f"{row['peer']}→{row['node']}" if row else device
    skr = row["skr"] / 1000 if row and row["skr"] is not None else None
    ratio = f"{skr / channel.skr_kbps:.2f}" if skr is not None and channel else "-"
    return [
        link,
        f"{where} {band} ({device})",
        str(row["n"]) if row else "no data",
        _num(skr),
        _num(channel.skr_kbps if channel else None),
        ratio,
        _percent(row["qber"] if row else None),
        f"{channel.qber_percent:.2f} %" if channel and channel.qber_percent else "-",
        _num(row["noise"] * 1000 if row and row["noise"] is not None else None),
        (row["status"] or "-") if row else "-",
    ]


def _spectrum_section(request: ReportRequest) -> list[str]:
    lines = ["## A link's spectrum"]
    target = request.osa
    if target is not None:
        try:
            return [*lines, "", *_live_spectrum(request, target)]
        except (PollError, OSError, ValueError) as exc:
            lines += ["", f"The OSA `{target.name}` did not sweep ({exc}); stored points follow."]
    return [*lines, "", *_stored_spectrum(request)]


def _live_spectrum(request: ReportRequest, target: OsaTarget) -> list[str]:
    """A sweep now, its plot, and its ITU-grid channel table."""
    options = target.options
    with OsaSession.open(
        options.visa.resource, dialect=options.dialect, timeout=options.visa.timeout
    ) as osa:
        settings = options.sweep_settings()
        sweep = osa.sweep(
            start_nm=settings.start_nm,
            stop_nm=settings.stop_nm,
            rbw_nm=options.resolution_nm,
            points=options.points,
        )
    report = sweep.itu_report(
        options.grid_ghz,
        options.quantum_channels,
        quantum_bandwidth_ghz=options.quantum_bandwidth_ghz,
    )
    plot_spectrum(sweep, report, request.out_dir / "spectrum.png")
    link = f"link {options.link}" if options.link else target.name
    rows = [[c.label, f"{c.peak_dbm:.1f}", _num(c.osnr_db, "{:.1f}")] for c in report.classical]
    rows += [
        [f"{n.label} (quantum)", f"{n.level_dbm:.1f}", f"notch {_num(n.depth_db, '{:.1f}')} dB"]
        for n in report.notches
    ]
    return [
        f"{link}, swept at {_utc(sweep.taken_ns)} by `{target.name}` ({sweep.identity}): "
        f"{len(report.classical)} classical channels, the quantum band shaded.",
        "",
        f"![spectrum of {link}](spectrum.png)",
        "",
        *_markdown_table(["channel", "peak (dBm)", "OSNR (dB) / notch"], rows),
    ]


def _stored_spectrum(request: ReportRequest) -> list[str]:
    rows = request.query(
        'SELECT last("peak_power_dbm") AS peak, last("occupied") AS occupied, '
        f'last("osnr_db") AS osnr FROM "osa_channel" WHERE {request.where} '
        'GROUP BY "device", "link", "channel"'
    )
    if not rows:
        return ["No OSA swept, and no `osa_channel` point is stored in this range: no spectrum."]
    device = rows[0]["device"]
    table = [
        [
            r["channel"],
            f"{r['peak']:.1f}",
            "yes" if r["occupied"] else "",
            _num(r["osnr"], "{:.1f}"),
        ]
        for r in sorted(rows, key=lambda r: float(r["channel"]))
        if r["device"] == device
    ]
    return [
        f"The last per-channel points `{device}` stored (link {rows[0]['link'] or '?'}):",
        "",
        *_markdown_table(["channel", "peak (dBm)", "occupied", "OSNR (dB)"], table),
    ]


def _otdr_section(request: ReportRequest) -> list[str]:
    lines = ["## An OTDR trace"]
    target = request.otdr
    if target is None:
        return [*lines, "", "No OTDR is configured: no trace."]
    try:
        return [*lines, "", *_live_otdr(request, target)]
    except (PollError, OSError, ValueError) as exc:
        return [*lines, "", f"The OTDR `{target.name}` gave no trace ({exc})."]


def _live_otdr(request: ReportRequest, target: OtdrTarget) -> list[str]:
    """An acquisition now over the baseline the collector saved, events and alarms marked."""
    options = target.options
    wavelength = options.wavelengths_nm[0]
    with OtdrSession.open(
        options.visa.resource, timeout=options.visa.timeout, name=options.link
    ) as otdr:
        trace = otdr.acquire(
            wavelength_nm=wavelength,
            pulse_width_ns=options.pulse_width_ns,
            range_m=options.range_m,
            averaging_s=options.averaging,
        )
        identity = otdr.identity
    baseline = (
        BaselineStore(options.baseline_dir).load(options.link, wavelength)
        if options.baseline_dir
        else None
    )
    thresholds = Thresholds(
        options.alarm_loss_db,
        options.alarm_total_loss_db,
        options.alarm_reflectance_db,
        options.alarm_length_m,
    )
    alarms = compare(baseline, trace, thresholds) if baseline is not None else []
    plot_otdr(
        trace,
        request.out_dir / "otdr.png",
        baseline,
        instrument=identity,
        taken_ns=time.time_ns(),
        alarms=alarms,
    )
    events = [
        [
            str(number),
            event.type.value,
            f"{event.distance_m / 1000:.3f}",
            _num(event.loss_db),
            _num(event.reflectance_db, "{:.1f}"),
        ]
        for number, event in enumerate(trace.events, start=1)
    ]
    against = (
        "over the commissioning baseline the collector saved (dashed)"
        if baseline is not None
        else "(no baseline saved: nothing to compare with)"
    )
    lines = [
        f"Link {options.link}, {wavelength} nm, acquired now by `{target.name}` {against}.",
        "",
        f"![OTDR trace of link {options.link}](otdr.png)",
        "",
        *_markdown_table(
            ["event", "type", "distance (km)", "loss (dB)", "reflectance (dB)"], events
        ),
    ]
    if alarms:
        lines += ["", "Alarms against the baseline:", ""]
        lines += [f"- {alarm.message}" for alarm in alarms]
    return lines


def _key_stock_section(request: ReportRequest) -> list[str]:
    lines = ["## Key stock per node"]
    rows = request.query(
        'SELECT mean("stored_key_count") AS stock FROM "kme_key_store" '
        f'WHERE {request.where} GROUP BY time({request.bucket}), "device", "node", '
        '"master_sae_id", "slave_sae_id" fill(null)'
    )
    if not rows:
        return [*lines, "", "No `kme_key_store` point arrived in this range: no key stock."]
    grouped: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for row in rows:
        pair = f"{row['master_sae_id']} → {row['slave_sae_id']}"
        value = math.nan if row["stock"] is None else float(row["stock"])
        at = request.centre_ns(row["time"])
        grouped[(row["node"] or row["device"], row["device"])][pair].append((at, value))
    panels = []
    for (node, device), pairs in sorted(grouped.items()):
        series = tuple(
            Series(pair, np.array([t for t, _ in points]), np.array([v for _, v in points]))
            for pair, points in sorted(pairs.items())
        )
        panels.append(Panel(f"{node} ({device})", "keys in stock", series, log=_wide(series)))
    request.plot(
        panels, "key_stock.png", "Key stock per SAE pair, per node (ETSI GS QKD 014 status)"
    )
    return [
        *lines,
        "",
        "Keys in stock for every SAE pair each node's key manager serves, as the collector "
        "read them over ETSI GS QKD 014 (counts only: never keys).",
        "",
        "![key stock per node](key_stock.png)",
    ]


def _faults_section(request: ReportRequest) -> list[str]:
    lines = ["## Faults and alarms"]
    lines.append("")
    if request.faults:
        lines += ["Injected into the twin:", ""]
        lines += [f"- {_utc(f.at_ns)}: {f.what}" for f in request.faults]
    else:
        lines.append("No fault was injected.")
    alarms = request.query(
        f'SELECT "message" FROM "otdr_alarm" WHERE {request.where} GROUP BY "link"'
    )
    lines.append("")
    if alarms:
        # every acquisition after the fault raises the same alarms again: each said once
        seen: dict[tuple[str, str], list[int]] = defaultdict(list)
        for alarm in alarms:
            seen[(alarm["link"], alarm["message"])].append(alarm["time"])
        lines += ["OTDR alarms the collector stored (first seen, acquisitions raising it):", ""]
        lines += [
            f"- {_utc(min(times))}, link {link}: {message} ({len(times)}x)"
            for (link, message), times in sorted(seen.items(), key=lambda item: min(item[1]))
        ]
    else:
        lines.append("No OTDR alarm was stored.")
    events = request.query(
        f'SELECT count("notification") AS n FROM "qkd_event" WHERE {request.where} '
        'GROUP BY "event", "link"'
    )
    lines.append("")
    if events:
        lines += ["QKD module notifications received:", ""]
        table = [[e["event"], e["link"], str(e["n"])] for e in events]
        lines += _markdown_table(["event", "link", "count"], table)
    else:
        lines.append("No QKD module notification was received.")
    return lines


# -- formatting ------------------------------------------------------------------------------


def _band(row: dict[str, Any], channel: Channel | None) -> str:
    """`ch 37` for a C-band channel, else the band (`O-band`): as the module tags it, or as
    the topology has it for a module that does not say (the AIT ones)."""
    if row.get("channel"):
        return f"ch {row['channel']}"
    if channel is not None:
        return (
            f"ch {channel.itu}" if channel.itu and channel.band == "C" else f"{channel.band}-band"
        )
    return f"{row.get('band') or '?'}-band"


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None or math.isnan(value) else pattern.format(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows)]


_STYLE = """body{font-family:sans-serif;max-width:1600px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 8px}
img{max-width:100%}"""


def to_html(markdown: str, images: Path) -> str:
    """The report as one HTML page, its PNGs inlined (data URIs) so that it travels alone."""
    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def inline(match: re.Match[str]) -> str:
        png = images / match.group(1)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([\w.-]+\.png)"', inline, body)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>MadQCI twin report</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}</body></html>\n"
    )


# -- the command -----------------------------------------------------------------------------


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register `report` on the main `qkdtel` parser."""
    p = subparsers.add_parser(
        "report",
        help="a report (Markdown and HTML with PNGs) of what the collector stored",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", required=True, help="the collector's configuration file")
    p.add_argument("--since", default="1h", help="range: this long until now (e.g. 30m, 2h)")
    p.add_argument("--start", help="range start, ISO 8601 (UTC unless it says)")
    p.add_argument("--end", help="range end, ISO 8601 (default: now)")
    p.add_argument("--out", type=Path, default=Path("report"), help="directory to write into")
    p.add_argument("--faults", type=Path, help="JSON list of injected faults (the demo's)")
    p.add_argument("--link", help="the link whose OSA and OTDR to use (default: the first)")
    p.add_argument(
        "--no-instruments", action="store_true", help="use stored points only, sweep nothing"
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)  # one error, one line
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        console.print(f"{exc.source}: invalid configuration", markup=False, highlight=False)
        for problem in exc.problems:
            console.print(f"  {problem}", markup=False, highlight=False)
        return EXIT_USAGE
    try:
        start_ns, end_ns = _time_range(args)
        sink = influx_sink(loaded, args.config)
        faults = read_faults(args.faults) if args.faults else []
    except ValueError as exc:
        console.print(str(exc), markup=False, highlight=False)
        return EXIT_USAGE
    osa, otdr = (None, None) if args.no_instruments else instruments(loaded, args.link)
    request = ReportRequest(
        query=sink_query(sink),
        start_ns=start_ns,
        end_ns=end_ns,
        out_dir=args.out.resolve(),
        osa=osa,
        otdr=otdr,
        faults=faults,
    )
    try:
        html = write_report(request)
    except (OSError, RuntimeError) as exc:  # InfluxDB unreachable, query refused
        reason = getattr(exc, "reason", exc)  # URLError: the socket's error, not its repr
        console.print(f"cannot read {sink.url}: {reason}", markup=False, highlight=False)
        return EXIT_USAGE
    Console().print(f"Report: {html} (and report.md beside it)", markup=False, soft_wrap=True)
    return EXIT_OK


def _time_range(args: argparse.Namespace) -> tuple[int, int]:
    """(start, end) in ns from --start/--end or --since; ValueError naming the bad option."""
    end = _instant(args.end, "--end") if args.end else time.time_ns()
    if args.start:
        start = _instant(args.start, "--start")
    else:
        try:
            since = TypeAdapter(Duration).validate_python(args.since)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"--since {args.since!r}: {message}") from None
        start = end - int(since * 1e9)
    if start >= end:
        raise ValueError("--start must be before --end")
    return start, end


def _instant(text: str, option: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} {text!r}: not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)


def influx_sink(loaded: LoadedConfig, source: str) -> InfluxV1Sink:
    """The configuration's first InfluxDB 1.x sink: the report reads it over InfluxQL."""
    for sink in loaded.config.sinks:
        if isinstance(sink, InfluxV1Sink):
            return sink
    raise ValueError(f"{source}: no influxdb_v1 sink: the report reads InfluxDB 1.x (InfluxQL)")


def sink_query(sink: InfluxV1Sink) -> Query:
    """InfluxQL on the sink's database (its credentials, if any, sent as HTTP basic auth)."""
    password = sink.password.get_secret_value() if sink.password else None
    auth = (sink.username, password or "") if sink.username else None
    return lambda q: influxql(sink.url, q, sink.database, auth=auth)


def instruments(
    loaded: LoadedConfig, link: str | None
) -> tuple[OsaTarget | None, OtdrTarget | None]:
    """The configured OSA and OTDR to measure with: those on `link` where it has them, else
    the first of their kind."""

    def pick(kind: type) -> tuple[str, Any] | None:
        found = [(d.config.name, d.options) for d in loaded.devices if isinstance(d.options, kind)]
        on_link = [f for f in found if link is not None and f[1].link == link]
        return (on_link or found or [None])[0]

    osa, otdr = pick(OsaOptions), pick(OtdrOptions)
    return (OsaTarget(*osa) if osa else None, OtdrTarget(*otdr) if otdr else None)


def read_faults(path: Path) -> list[InjectedFault]:
    """The faults a JSON file lists (`[{"at_ns": ..., "what": ...}]`); ValueError naming it."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return [InjectedFault(int(f["at_ns"]), str(f["what"])) for f in document]
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a list of {{at_ns, what}} faults ({exc})") from None


def write_faults(path: Path, faults: Sequence[InjectedFault]) -> Path:
    """Write `faults` for `qkdtel report --faults` (what `read_faults` reads)."""
    path.write_text(json.dumps([f.as_json() for f in faults], indent=1), encoding="utf-8")
    return path

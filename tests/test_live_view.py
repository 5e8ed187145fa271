"""The live view fits a terminal from 80x24 up; output that is not a terminal is never squeezed.

The samples are real: every module of the simulated MadQCI twin polled once by qkdtel's
poller (tests/fixtures_snmp.py, snmp_sims). The view is rendered as rich renders it on an
80x24 terminal (a Console forced to be one, into a StringIO) and checked line by line: no row
wrapped or cut, every number whole, the rows needing attention first, the rest paged.
"""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import time

import pytest
import yaml
from rich.console import Console

from qkdtel.config import load_config
from qkdtel.live import CHROME_LINES, PAGE_SECONDS, LiveLinkTable
from qkdtel.output import print_unsqueezed
from qkdtel.poller import DevicePoller
from qkdtel.sdk import Sample


@pytest.fixture(scope="module")
def twin_samples(snmp_sims) -> list[Sample]:
    """One poll of every module of the twin, status points included."""
    loaded = load_config(snmp_sims.config_path)

    async def main() -> list[Sample]:
        pollers = [DevicePoller.create(d, max_backoff=60.0) for d in loaded.devices]
        try:
            results = await asyncio.gather(*(p.poll() for p in pollers))
        finally:
            await asyncio.gather(*(p.aclose() for p in pollers))
        return [s for r in results for s in r.all_samples()]

    return asyncio.run(main())


def terminal(width: int, height: int) -> Console:
    return Console(
        file=io.StringIO(), width=width, height=height, force_terminal=True, color_system=None
    )


def shown(view: LiveLinkTable, width: int, height: int, now: float) -> list[str]:
    console = terminal(width, height)
    console.print(view.render(width, height, now=now))
    return console.file.getvalue().splitlines()


def row_lines(lines: list[str]) -> list[str]:
    """The table's data rows: after the header's rule, before the footer."""
    start = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"}) + 1
    return [line for line in lines[start:] if line and not line.startswith("page ")]


@pytest.mark.parametrize(("width", "height"), [(80, 24), (100, 30), (160, 50)])
def test_view_fits_the_terminal_no_row_wrapped_no_number_cut(twin_samples, width, height):
    view = LiveLinkTable()
    view(twin_samples)
    assert len(view.links) > 24 - CHROME_LINES  # more links than an 80x24 screen holds
    lines = shown(view, width, height, now=0.0)
    assert len(lines) <= height
    assert all(len(line) <= width for line in lines), max(len(line) for line in lines)
    rows = row_lines(lines)
    # every line a whole row (nothing wrapped), as many as fit
    assert len(rows) == min(len(view.links), height - CHROME_LINES)
    link_ids = {row.tags["link"] for row in view.links.values()}
    for line in rows:
        assert line.split()[0] in link_ids, line  # each row starts with its link, not a fold
        for number in re.findall(r"\S*\d\S*", line):
            assert "…" not in number, line
        assert re.search(r"\d+\.\d\d (k|M)?bit/s|\s-\s|\d bit/s", line), line


def test_rows_needing_attention_come_first_and_the_rest_take_turns(twin_samples):
    view = LiveLinkTable()
    view(twin_samples)
    down = sorted({r.tags["device"] for r in view.links.values()})[0]
    view([Sample("qkdtel_device_status", {"device": down}, {"up": False})])
    attention = [r for r in view.ordered() if view.needs_attention(r)]
    assert attention and view.ordered()[: len(attention)] == attention
    first_page = row_lines(shown(view, 80, 24, now=0.0))
    assert first_page[0].split()[1] in {"down", "pending", "off", "failure", "active"}
    assert any(" down " in line for line in first_page[: len(attention)])
    seen: set[str] = set()
    pages = 1 + len(view.links) // (24 - CHROME_LINES)
    for page in range(pages + 1):
        page_rows = row_lines(shown(view, 80, 24, now=page * PAGE_SECONDS))
        assert page_rows[: len(attention)] == first_page[: len(attention)]  # pinned
        seen |= {" ".join(line.split()[:2]) for line in page_rows}
    assert len(seen) >= len({r.tags["link"] for r in view.links.values()}) // 2


def test_not_a_terminal_gets_every_column_and_row_unsqueezed(twin_samples):
    view = LiveLinkTable()
    view(twin_samples)
    console = Console(file=io.StringIO(), width=80)  # a file: rich would squeeze to 80
    assert not console.is_terminal
    print_unsqueezed(console, view.render())
    out = console.file.getvalue()
    for row in view.links.values():
        assert row.tags["device"] in out  # names whole, not folded or cut
    assert len(row_lines(out.splitlines())) == len(view.links)
    assert max(len(line) for line in out.splitlines()) > 80


def test_poll_into_a_pipe_keeps_tags_and_fields_whole(snmp_sims):
    name = next(iter(snmp_sims.agents))
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "poll", "-c", str(snmp_sims.config_path), name],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "80", "LANG": "C.UTF-8"},
    )
    assert result.returncode == 0, result.stderr
    assert f"device={name}" in result.stdout
    assert any(len(line) > 80 for line in result.stdout.splitlines())
    assert re.search(r"qkd_module .*links=\d+", result.stdout)


def test_sims_into_a_log_keep_their_table_whole(tmp_path):
    from tests.sims_cli import start, stop

    config, log = tmp_path / "sims.yaml", tmp_path / "sims.log"
    process = start(["up", "--config-out", str(config)], config, log)
    try:
        deadline = time.monotonic() + 30
        while "agents of" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        assert stop(process) == 0
    out = log.read_text()
    devices = yaml.safe_load(config.read_text())["devices"]
    for device in devices:
        assert re.search(rf"│ {re.escape(device['name'])}\s+│", out), device["name"]
    assert any(len(line) > 80 for line in out.splitlines())

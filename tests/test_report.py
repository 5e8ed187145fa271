"""The report of what the collector stored: real points from a short run of the whole twin
(every family, `sims up` in a child process) written by the real daemon into a real influxd,
a fault injected half-way through the twin's control API, the report written from InfluxDB with
the twin's OSA swept and OTDR acquired at report time."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from PIL import Image
from rich.console import Console

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from qkdtel.drivers.osa.options import OsaOptions
from qkdtel.sims.demo import (
    Fault,
    collector_document,
    inject_fault,
    otdr_baseline,
    wait_for_file,
)
from qkdtel.sims.influxd import InfluxServer, free_port
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.report import (
    InjectedFault,
    OsaTarget,
    ReportRequest,
    instruments,
    read_faults,
    write_faults,
    write_report,
)
from qkdtel.sims.topology import load_topology

QKDTEL = [sys.executable, "-m", "qkdtel.cli"]
SECONDS = 14.0
FIGURES = ("key_rate", "qber", "excess_noise", "spectrum", "otdr", "key_stock")


class TwinRun:
    """What the module's one twin run left: the database, the config, the report."""

    def __init__(self, influx: InfluxServer, database: str, config: Path, out: Path):
        self.influx, self.database, self.config, self.out = influx, database, config, out
        self.start_ns = self.end_ns = 0
        self.faults: list[InjectedFault] = []

    @property
    def markdown(self) -> str:
        return (self.out / "report.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def twin_run(influxdb: InfluxServer, tmp_path_factory) -> TwinRun:
    """The whole twin polled by the daemon into InfluxDB for SECONDS, a 3 dB bend put on link 4
    half-way, then the report (the twin still running: its OSA and OTDR measure for it)."""
    tmp = tmp_path_factory.mktemp("twin-report")
    if not influxdb.running:
        influxdb.start()
    database = f"report_{int(time.time())}"
    influxdb.create_database(database)
    run = TwinRun(influxdb, database, tmp / "qkdtel.yaml", tmp / "report")
    # every family, the opt-in SD-QKD nodes too: their qkd_link points repeat the modules'
    families = "snmp,switches,keys,optics,sdqkd"
    with SimsProcess(tmp / "sims.yaml", ["--speed", "60", "--families", families]) as sims:
        document = collector_document(sims.config, tmp, None, 2.0)
        document["sinks"].insert(
            0, {"type": "influxdb_v1", "url": influxdb.url, "database": database}
        )
        run.config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        loaded = load_config_text(run.config.read_text(encoding="utf-8"), str(run.config))
        collector = Collector(loaded)

        async def half_way() -> None:
            await asyncio.sleep(SECONDS / 2)
            # the bend after the OTDR's baseline (a loaded machine may delay its first poll)
            baseline = otdr_baseline(loaded, "4")
            assert baseline is not None
            await asyncio.to_thread(wait_for_file, baseline, time.monotonic() + SECONDS / 3)
            done = await asyncio.to_thread(
                inject_fault, sims.config_path, Fault("4", 3.0), Console(quiet=True)
            )
            assert done is not None, "the twin refused the fault"
            run.faults.append(done)

        async def collect() -> None:
            task = asyncio.create_task(half_way())
            await collector.run(duration=SECONDS)
            await task

        run.start_ns = time.time_ns()
        asyncio.run(collect())
        run.end_ns = time.time_ns()
        osa, otdr = instruments(loaded, "4")
        write_report(
            ReportRequest(
                query=lambda q: influxdb.query(q, database),
                start_ns=run.start_ns,
                end_ns=run.end_ns,
                out_dir=run.out,
                osa=osa,
                otdr=otdr,
                faults=run.faults,
            )
        )
    return run


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `## heading`."""
    section = markdown.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def test_every_figure_is_a_real_png(twin_run):
    for name in FIGURES:
        path = twin_run.out / f"{name}.png"
        assert path.stat().st_size > 20_000, name  # an empty axes is ~10 KB
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 1000 and image.height >= 500, name
            # not a blank canvas: a figure with lines has many colours
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def test_the_table_has_a_row_per_published_channel_and_every_link(twin_run):
    rows = table_rows(twin_run.markdown, "Measured against published, per link")
    channels = load_topology(None).channels
    # one row per channel although the SD-QKD nodes reported the same links again
    repeated = twin_run.influx.query(
        'SELECT count("link_status") FROM "qkd_link" WHERE "module" != \'\'', twin_run.database
    )
    assert repeated and repeated[0]["count"] > 0
    assert len(rows) == len(channels)
    assert {r[0] for r in rows} == {c.link for c in channels}
    for row in rows:
        assert row[2] != "no data", row  # every channel of the twin delivered points
        assert float(row[4]) > 0, row  # the published SKR beside the measured one
    # the last link state of each channel: the direct links' channels produce key
    assert sum(r[9] == "active" for r in rows if "+" not in r[0]) >= 20, rows
    # a DV channel: measured QBER beside the published one
    link9 = next(r for r in rows if r[0] == "9")
    assert link9[6].endswith("%") and link9[7] == "2.50 %"
    assert 0.5 < float(link9[5]) < 2.0  # measured / published


def test_the_injected_fault_shows_in_the_otdr_trace_and_the_fault_list(twin_run):
    markdown = twin_run.markdown
    assert "3 dB bend on link 4" in markdown.split("## Faults and alarms", 1)[1]
    otdr = markdown.split("## An OTDR trace", 1)[1].split("\n## ", 1)[0]
    assert "Link 4" in otdr and "over the commissioning baseline" in otdr
    assert re.search(r"new non-reflective event at \d+ m \(3\.\d\d dB\)", otdr), otdr
    spectrum = markdown.split("## A link's spectrum", 1)[1].split("\n## ", 1)[0]
    assert "link 4, swept at" in spectrum and "37 (quantum)" in spectrum


def test_key_stock_names_every_node_with_a_key_manager(twin_run):
    rows = twin_run.influx.query(
        'SELECT last("stored_key_count") FROM "kme_key_store" GROUP BY "node"',
        twin_run.database,
    )
    assert len(rows) >= 9  # one KME per node with QKD modules
    assert "![key stock per node](key_stock.png)" in twin_run.markdown


def test_the_html_travels_alone(twin_run):
    html = (twin_run.out / "report.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    assert not re.search(r'src="[^"]+\.png"', html)
    assert "<table>" in html and "link 4" in html


def test_the_command_writes_the_same_report_from_the_stored_range(twin_run, tmp_path):
    faults = write_faults(tmp_path / "faults.json", twin_run.faults)
    assert read_faults(faults) == twin_run.faults

    def iso(ns: int) -> str:
        return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()

    out = tmp_path / "again"
    result = subprocess.run(
        [
            *QKDTEL,
            "report",
            *("-c", str(twin_run.config), "--out", str(out), "--faults", str(faults)),
            *("--start", iso(twin_run.start_ns), "--end", iso(twin_run.end_ns)),
            "--no-instruments",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out / "report.html") in result.stdout
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "3 dB bend on link 4" in markdown
    assert len(table_rows(markdown, "Measured against published, per link")) == len(
        load_topology(None).channels
    )
    # no instrument swept: the spectrum comes from the points the collector stored
    assert "The last per-channel points `osa-" in markdown
    assert "No OTDR is configured" in markdown


def test_missing_data_is_said_in_words(influxdb, influx_db, tmp_path):
    # an OSA address where nothing listens: a real refused connection
    osa = OsaTarget(
        "osa-nowhere",
        OsaOptions.model_validate(
            {
                "dialect": "yokogawa",
                "visa": {"resource": f"TCPIP::127.0.0.1::{free_port()}::SOCKET", "timeout": 1},
            }
        ),
    )
    now = time.time_ns()
    html = write_report(
        ReportRequest(
            query=lambda q: influxdb.query(q, influx_db),
            start_ns=now - 600 * 10**9,
            end_ns=now,
            out_dir=tmp_path / "empty",
            osa=osa,
        )
    )
    markdown = (tmp_path / "empty" / "report.md").read_text(encoding="utf-8")
    assert "No `qkd_link` point arrived in this range: no key rate to show." in markdown
    assert "No QBER of the DV channels arrived" in markdown
    assert "The OSA `osa-nowhere` did not sweep" in markdown
    assert "no `osa_channel` point is stored in this range: no spectrum" in markdown
    assert "No OTDR is configured: no trace." in markdown
    assert "No `kme_key_store` point arrived in this range: no key stock." in markdown
    assert "No fault was injected." in markdown
    # every published channel still listed, each saying it sent nothing
    rows = table_rows(markdown, "Measured against published, per link")
    assert rows and all(r[2] == "no data" for r in rows)
    assert not list((tmp_path / "empty").glob("*.png"))  # no empty figure
    assert html.is_file()


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    config = tmp_path / "qkdtel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "collector": {"spool_dir": str(tmp_path / "spool")},
                "sinks": [{"type": "file", "path": str(tmp_path / "lp")}],
                "devices": [],
            }
        ),
        encoding="utf-8",
    )
    nowhere = tmp_path / "nowhere.yaml"  # an InfluxDB where nothing listens
    nowhere.write_text(
        yaml.safe_dump(
            {
                "collector": {"spool_dir": str(tmp_path / "spool")},
                "sinks": [
                    {
                        "type": "influxdb_v1",
                        "url": f"http://127.0.0.1:{free_port()}",
                        "database": "qkd",
                        "username": "noc",
                        "password": "s3cret-never-shown",
                    }
                ],
                "devices": [],
            }
        ),
        encoding="utf-8",
    )
    for file, args, expected in (
        (config, ["--since", "5x"], "--since '5x': a duration is"),
        (config, ["--start", "yesterday"], "--start 'yesterday': not an ISO 8601 time"),
        (config, [], "no influxdb_v1 sink"),
        (nowhere, [], "cannot read http://127.0.0.1:"),
    ):
        result = subprocess.run(
            [*QKDTEL, "report", "-c", str(file), *args, "--out", str(tmp_path / "r")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            args,
            result.stderr,
        )
        assert "Traceback" not in result.stderr and "s3cret" not in result.stderr

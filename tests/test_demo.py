"""The README's first command end to end: the whole twin -> daemon -> InfluxDB and the local
store, a fault injected half-way, the report written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_demo_fills_the_store(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qkdtel.cli",
            "demo",
            "--seconds",
            "20",
            "--interval",
            "2",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "What arrived in InfluxDB" in out
    # The whole twin, not only the QKD modules: 28 modules and the other families.
    devices = int(re.search(r"The MadQCI twin: (\d+) simulated devices", out).group(1))
    assert devices > 28
    # Every link of the MadQCI twin shows up with a measured key rate.
    for link in ("1", "2", "3", "4", "5", "6", "7", "8", "9", "3+4", "2+3+4", "R1"):
        assert re.search(rf"│ {re.escape(link)}\s+│ \S+.*kbit/s", out), link
    # Counter-derived rates (Toshiba) agree with the published means despite the accelerated
    # clock of the simulators: link 9 is published at 2857.1 kbit/s.
    link9 = re.findall(r"│ 9\s+│ (tsb-\S+)\s+│\s+│\s+[tr]x │\s+\d+ │\s+([\d.]+) kbit/s", out)
    assert len(link9) == 2, link9  # both ends
    for module, rate in link9:
        assert 0.5 < float(rate) / 2857.1 < 2.0, (module, rate)
    polls = int(re.search(r"(\d+) device polls recorded in InfluxDB", out).group(1))
    assert polls >= 28 * 3  # 28 modules, polled every 2 s for 20 s
    stored = int(re.search(r"Local line-protocol store: (\d+) points", out).group(1))
    assert stored > polls
    assert (workdir / "qkdtel.yaml").is_file()
    # Half-way, a 3 dB bend on link 4 through the twin's control API; then the report.
    assert re.search(r"Injected: 3 dB bend on link 4, [\d.]+ km from its first end", out)
    report = Path(re.search(r"Report: (\S+)", out).group(1))
    assert report == workdir / "report" / "report.html" and report.is_file()
    markdown = (workdir / "report" / "report.md").read_text(encoding="utf-8")
    assert "3 dB bend on link 4" in markdown
    for figure in ("key_rate", "spectrum", "otdr", "key_stock"):
        assert (workdir / "report" / f"{figure}.png").stat().st_size > 20_000, figure


def test_a_fault_on_a_link_the_twin_lacks_is_refused_before_anything_starts(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "demo", "--fault", "99:3", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "argument --fault: no link '99' in the twin: 1, 2," in result.stderr
    assert not workdir.exists()  # nothing started, nothing written

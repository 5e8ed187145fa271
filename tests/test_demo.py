"""The README's first command end to end: simulated network -> daemon -> InfluxDB, local store."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_fills_the_store(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qkdtel.cli",
            "demo",
            "--seconds",
            "12",
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
    # Every link of the MadQCI twin shows up with a measured key rate.
    for link in ("1", "2", "3", "4", "5", "6", "7", "8", "9", "3+4"):
        assert re.search(rf"│ {re.escape(link)}\s+│ \S+.*kbit/s", out), link
    # Counter-derived rates (Toshiba) agree with the published means despite the accelerated
    # clock of the simulators: link 9 is published at 2857.1 kbit/s.
    link9 = re.findall(r"│ 9\s+│ (tsb-\S+)\s+│\s+│\s+\d+ │\s+([\d.]+) kbit/s", out)
    assert len(link9) == 2, link9  # both ends
    for module, rate in link9:
        assert 0.5 < float(rate) / 2857.1 < 2.0, (module, rate)
    polls = int(re.search(r"(\d+) device polls recorded in InfluxDB", out).group(1))
    assert polls >= 28 * 3  # 28 modules, polled every 2 s for 12 s
    stored = int(re.search(r"Local line-protocol store: (\d+) points", out).group(1))
    assert stored > polls
    assert (workdir / "qkdtel.yaml").is_file()

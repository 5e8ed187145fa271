"""`qkdtel spool status`: backlog per sink, the oldest pending point's age, bytes on disk.

A real spool, held open by a `Spool` as the daemon holds it (a write connection, WAL), read by
the real command in another process: status must work while the daemon runs and change nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from qkdtel.spool import SPOOL_FILE, Spool


def spool_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "spool", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_while_the_spool_is_open_shows_each_sinks_backlog(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    config = tmp_path / "qkdtel.yaml"
    config.write_text(f"collector:\n  spool_dir: {spool_dir}\n")
    spool = Spool(spool_dir / SPOOL_FILE, ["archive", "influx"], 10_000)
    now = time.time_ns()
    old, newer = now - 600 * 10**9, now - 60 * 10**9
    try:
        spool.append([f'qkd_link,link=1 qber=0.01,note="a b" {old}', f"qkd_link qber=0.02 {old}"])
        spool.append([f"qkd_link qber=0.03 {newer}"])
        batch = spool.read("influx", 2)  # influx has written the first submit, archive nothing
        assert batch is not None and len(batch) == 2
        spool.ack("influx", batch, [("qkd_link qber=0.02 " + str(old), "HTTP 400: bad")])
        before = (spool_dir / SPOOL_FILE).read_bytes()

        result = spool_cli("status", "-c", str(config), "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["points"] == 3
        assert doc["bytes_on_disk"] >= len(before)
        by_sink = {s["sink"]: s for s in doc["sinks"]}
        assert by_sink["archive"]["pending"] == 3
        assert by_sink["influx"]["pending"] == 1
        assert by_sink["influx"]["rejected"] == 1
        assert 600 <= by_sink["archive"]["oldest_pending_age_s"] < 700
        assert 60 <= by_sink["influx"]["oldest_pending_age_s"] < 160

        table = spool_cli("status", "-c", str(config))
        assert table.returncode == 0, table.stderr
        assert "3 point(s)" in table.stdout
        rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()[2:]}
        assert rows["archive"][0] == "3" and rows["archive"][1].startswith("10m")
        assert rows["influx"] == ["1", rows["influx"][1], "1"]
        assert rows["influx"][1].startswith(("1m", "2m"))
        assert (spool_dir / SPOOL_FILE).read_bytes() == before  # a look changes nothing
        spool.append([f"qkd_link qber=0.04 {now}"])  # and the daemon's spool still writes
    finally:
        spool.close()


def test_status_of_a_missing_spool_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "qkdtel.yaml"
    config.write_text(f"collector:\n  spool_dir: {tmp_path / 'nothing'}\n")
    result = spool_cli("status", "-c", str(config))
    assert result.returncode == 2
    assert f"no spool at {tmp_path / 'nothing' / SPOOL_FILE}" in result.stderr
    assert "Traceback" not in result.stderr

"""The demo leaves what it collected in its workdir, and its "run it again" commands work as
printed: the kept InfluxDB starts again with its data, the agents on the ports the config
names, and `qkdtel run` with the printed config adds to the same database."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.parse
import urllib.request

QKDTEL = [sys.executable, "-m", "qkdtel.cli"]


def count_polls(port: int) -> int:
    return _query(port, "SELECT count(up) FROM qkdtel_device_status")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_demo_data_stays_and_its_run_again_hint_works(tmp_path):
    workdir = tmp_path / "demo"
    demo = subprocess.run(
        [
            *QKDTEL,
            "demo",
            *("--seconds", "6", "--interval", "2", "--workdir", str(workdir)),
            "--no-report",  # tests/test_demo.py has it; this test is about running again
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    out = demo.stdout
    assert (workdir / "influxdb").is_dir() and any((workdir / "lineprotocol").iterdir())
    assert not (workdir / "report").exists() and "Report:" not in out
    commands = out.split("Run it again", 1)[1].splitlines()[1:]
    influxd, sims, run = (shlex.split(c.strip()) for c in commands[:3])
    assert (influxd[0], sims[:3], run[:2]) == (
        "influxd",
        ["qkdtel", "sims", "up"],
        ["qkdtel", "run"],
    )
    port = int(re.search(r"influx -port (\d+) -database qkd", out).group(1))

    started = []
    try:
        started.append(
            subprocess.Popen(influxd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        wait_for(lambda: _answers(port), 30, "the kept influxd did not come back")
        before = count_polls(port)
        assert before > 0, "the demo's data did not stay"
        started.append(
            subprocess.Popen([*QKDTEL[:-1], "qkdtel.sims", *sims[2:]], stdout=subprocess.DEVNULL)
        )
        time.sleep(3)  # the agents bind their ports
        second_run = time.time_ns()
        again = subprocess.run(
            [*QKDTEL, *run[1:], "--duration", "6"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "100"},
        )
        assert again.returncode == 0, again.stderr[-3000:]
        wait_for(lambda: count_polls(port) > before, 30, "the second run wrote nothing")
        ups = _query(
            port,
            f"SELECT count(up) FROM qkdtel_device_status WHERE up = true AND time > {second_run}",
        )
        assert ups > 0, (
            "no successful poll in the second run: the agents are not where the config says"
        )
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=15)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as resp:
            return resp.status == 204
    except OSError:
        return False


def _query(port: int, q: str) -> int:
    query = urllib.parse.urlencode({"db": "qkd", "q": q})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/query?{query}", timeout=10) as resp:
        series = json.load(resp)["results"][0].get("series", [])
    return sum(row[1] for s in series for row in s["values"])

"""Operating the daemon through its log: `--log-format json`, `--log-level` after the
subcommand, a bad level refused, chatty libraries quiet at INFO; refused SNMP notifications
counted (qkdtel_listener) and logged without flooding; a trap port in use is a clear error."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.collector_run import collector_document, written


def qkdtel(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def config(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "qkdtel.yaml"
    path.write_text(yaml.safe_dump({**collector_document(tmp_path, []), **sections}))
    return path


def json_records(stderr: str) -> list[dict]:
    """Every stderr line as a JSON object (a line that is not one fails the test)."""
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def test_a_bad_log_level_is_a_usage_error(tmp_path):
    for args in (["--log-level", "LOUD", "check"], ["check", "--log-level", "LOUD"]):
        result = qkdtel(*args, "-c", str(config(tmp_path)))
        assert result.returncode == 2, result.stderr
        assert "'LOUD' is not a level: use one of DEBUG, INFO" in result.stderr
        assert "Traceback" not in result.stderr


def test_json_lines_after_the_subcommand_and_quiet_libraries(tmp_path):
    cfg = str(config(tmp_path))
    info = qkdtel("run", "-c", cfg, "--duration", "1", "--log-format", "json")
    assert info.returncode == 0, info.stderr
    records = json_records(info.stderr)
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"] == "collecting from 0 device(s)" for r in records), records
    assert all(r["level"] != "DEBUG" for r in records)
    assert not [r for r in records if r["logger"].startswith("apscheduler")]  # quiet at INFO

    debug = qkdtel(
        "run", "-c", cfg, "--duration", "1", "--log-format", "json", "--log-level", "debug"
    )
    assert debug.returncode == 0, debug.stderr
    records = json_records(debug.stderr)
    assert any(r["level"] == "DEBUG" for r in records)
    assert any(r["logger"].startswith("apscheduler") for r in records)  # DEBUG: all of them

    text = qkdtel("--log-level", "WARNING", "run", "-c", cfg, "--duration", "1")
    assert text.returncode == 0 and "collecting from" not in text.stderr, text.stderr


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_line(proc: subprocess.Popen, text: str) -> str:
    """What the daemon logged up to and including the first line containing `text`."""
    seen = ""
    for line in proc.stderr:
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"the daemon ended before logging {text!r}: {seen}")


@pytest.mark.skipif(not shutil.which("snmptrap"), reason="Net-SNMP tools missing")
def test_refused_traps_are_counted_and_logged_once_then_summarised(tmp_path):
    port = free_udp_port()
    traps = {"listen": f"127.0.0.1:{port}", "communities": ["right-one"]}
    cfg = config(tmp_path, traps=traps)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
    )
    head = wait_for_line(daemon, "collecting from")  # listening from then on
    try:
        for _ in range(3):
            subprocess.run(
                ["snmptrap", "-M", "/dev/null", "-v2c", "-c", "guessed", f"127.0.0.1:{port}",
                 "", "1.3.6.1.6.3.1.1.5.1"],
                check=True, timeout=10,
            )  # fmt: skip
        time.sleep(1.5)  # one self-telemetry period (0.5 s) and more
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    err = head + err
    assert daemon.returncode == 0, err
    refusals = [r for r in json_records(err) if "refused on" in r["message"]]
    assert len(refusals) == 2, refusals  # the first at once, the rest in one summary
    first, summary = refusals
    assert first["level"] == "WARNING" and first["reason"] == "wrong_community"
    assert first["sender"] == "127.0.0.1"
    assert summary["message"].startswith("2 more SNMP notification(s) refused")
    assert summary["refused"] == {"wrong_community": 2}
    assert "guessed" not in err  # the community tried is never logged

    listener = [ln for ln in written(tmp_path).splitlines() if ln.startswith("qkdtel_listener,")]
    assert listener and "listener=traps" in listener[-1]
    assert "refused_wrong_community=3i" in listener[-1] and "received=0i" in listener[-1]


def test_trap_port_in_use_is_exit_2_naming_the_address(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        cfg = config(tmp_path, traps={"listen": f"127.0.0.1:{port}", "communities": ["c"]})
        result = qkdtel("run", "-c", str(cfg), "--duration", "5")
    assert result.returncode == 2, result.stderr
    assert (
        f"cannot start: listener traps (snmp_traps): cannot listen on 127.0.0.1:{port}:"
        " Address already in use"
    ) in result.stderr
    assert "Traceback" not in result.stderr

"""The configuration file: validation errors with paths and lines, secrets, env and files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from qkdtel.config import ConfigError, load_config, load_config_text

GOOD = """
collector:
  concurrency: 4
sinks:
  - type: influxdb_v2
    url: https://influx.example:8086
    org: madqci
    bucket: qkd
    token: ${QKDTEL_TEST_TOKEN}
devices:
  - name: probe-1
    driver: tcp_probe
    interval: 10s
    timeout: 500ms
    tags: {node: Quevedo, domain: RM}
    address: 127.0.0.1:1
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text))
    return info.value.problems


def test_durations_units_and_env_secret(monkeypatch, tcp_probe_driver):
    monkeypatch.setenv("QKDTEL_TEST_TOKEN", "s3cr3t-token")
    loaded = load_config_text(GOOD)
    device = loaded.devices[0]
    assert device.config.interval == 10.0
    assert device.config.timeout == 0.5
    assert device.options.address == "127.0.0.1:1"
    sink = loaded.config.sinks[0]
    assert sink.token.get_secret_value() == "s3cr3t-token"
    assert "s3cr3t" not in repr(loaded.config) and "s3cr3t" not in str(sink)


def test_missing_env_var_is_an_error_at_its_path(monkeypatch, tcp_probe_driver):
    monkeypatch.delenv("QKDTEL_TEST_TOKEN", raising=False)
    (problem,) = problems(GOOD)
    assert problem.startswith("sinks[0].token (line 9): environment variable QKDTEL_TEST_TOKEN")


def test_secret_from_file(tmp_path, tcp_probe_driver):
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    loaded = load_config_text(f"""
sinks:
  - {{type: influxdb_v2, url: "http://127.0.0.1:8086", bucket: b, token_file: "{secret}"}}
""")
    assert loaded.config.sinks[0].token.get_secret_value() == "from-a-file"


def test_every_error_reported_with_path_and_line_never_the_value(tcp_probe_driver):
    found = problems("""
collector:
  concurrency: 0
sinks:
  - type: influxdb_v2
    url: ftp://nowhere
    bucket: b
    token: hunter2-secret
  - type: carrier-pigeon
devices:
  - name: ok-device
    driver: tcp_probe
    address: 127.0.0.1:1
  - name: bad device name
    driver: tcp_probe
    interval: soon
    address: 127.0.0.1:1
  - name: probe-3
    driver: tcp_probe
    adress: 127.0.0.1:1
  - name: probe-4
    driver: warp_drive
""")
    text = "\n".join(found)
    assert "hunter2" not in text
    expect = [
        "collector.concurrency (line 3)",
        "sinks[0].url (line 6)",
        "sinks[1] (line 9)",
        "devices[1].name (line 14)",
        "devices[1].interval (line 16)",
        "devices[2].address (line 18)",  # missing: reported where the device starts
        "devices[2].adress (line 20)",  # the typo itself
        "devices[3].driver (line 22): no driver named 'warp_drive'",
    ]
    for prefix in expect:
        assert any(p.startswith(prefix) for p in found), (prefix, found)


def test_duplicate_device_names_rejected(tcp_probe_driver):
    found = problems("""
devices:
  - {name: a, driver: tcp_probe, address: "127.0.0.1:1"}
  - {name: a, driver: tcp_probe, address: "127.0.0.1:2"}
""")
    assert found == ["devices[1].name (line 4): names must be unique; devices[0] has this name too"]


def test_duplicate_sink_names_rejected_even_by_default():
    found = problems("""
sinks:
  - {type: influxdb_v1, url: "http://127.0.0.1:8086", database: a}
  - {type: influxdb_v1, url: "http://127.0.0.1:8087", database: b}
""")
    assert found == ["sinks[1].name (line 4): names must be unique; sinks[0] has this name too"]


def test_no_sinks_means_local_store():
    loaded = load_config_text("devices: []")
    (sink,) = loaded.config.effective_sinks()
    assert sink.type == "file"


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read the file" in info.value.problems[0]


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_check_command_exit_2_with_paths(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("collector:\n  batch_size: -1\nsinks:\n  - type: file\n    rotate_bytes: 3\n")
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2
    assert "collector.batch_size (line 2)" in result.stderr
    assert "sinks[0].rotate_bytes (line 5)" in result.stderr


def test_check_command_ok(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("sinks: [{type: file, path: " + str(tmp_path / "lp") + "}]\n")
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_run_refuses_a_bad_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("devices:\n  - name: x\n")
    result = run_cli("run", "-c", str(cfg), "--duration", "1")
    assert result.returncode == 2
    assert "devices[0].driver (line 2)" in result.stderr


def test_schema_is_json_schema():
    result = run_cli("config", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert {"collector", "sinks", "devices"} <= set(schema["properties"])

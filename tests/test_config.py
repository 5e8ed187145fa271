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


def test_durations_and_numbers_are_finite_and_bounded():
    found = problems("""
collector:
  shutdown_grace: .inf
  flush_interval: 1.0e+308
  max_backoff: 999999999999999999999999999999999999999999999999999999999999999999h
  retry_max_delay: .nan
  self_telemetry_interval: 2h
  concurrency: 100000000000000000000
  batch_size: .inf
sinks:
  - {type: influxdb_v2, url: "http://127.0.0.1:8086", bucket: b, timeout: 11m}
""")
    assert sorted(found) == [
        "collector.batch_size (line 9): Input should be a finite number",
        "collector.concurrency (line 8): Input should be less than or equal to 4096",
        "collector.flush_interval (line 4): Input should be less than or equal to 3600",
        "collector.max_backoff (line 5): Input should be less than or equal to 86400",
        "collector.retry_max_delay (line 6): Input should be a finite number",
        "collector.self_telemetry_interval (line 7): Input should be less than or equal to 3600",
        "collector.shutdown_grace (line 3): Input should be a finite number",
        "sinks[0].timeout (line 11): Input should be less than or equal to 600",
    ]


def test_a_driver_duration_is_at_most_a_week():
    (problem,) = problems("""
devices:
  - name: idq
    driver: qkd_snmp
    address: 127.0.0.1
    profile: cerberis3
    snmp: {request_timeout: 169h}
""")
    assert (
        problem
        == "devices[0].snmp.request_timeout (line 7): a duration is at most 7 days (604800 s)"
    )


def test_yaml_errors_give_line_and_column_never_the_offending_text():
    for text, expected in [
        (
            "sinks:\n  - type: influxdb_v1\n    password: hunter2: x\n",
            "line 3, column 22: not valid YAML: mapping values are not allowed here",
        ),
        (
            "sinks:\n  - {type: influxdb_v1, password: *hunter2}\n",
            "line 2, column 35: not valid YAML: found undefined alias (not shown)",
        ),
        (
            "collector:\n  concurrency: !!int hunter2\n",
            "line 2, column 16: not valid YAML: the value is not a valid int",
        ),
        (
            "collector:\n\tconcurrency: 2\n",
            "line 2, column 1: not valid YAML: found character '\\t' that cannot start any token"
            " (while scanning for the next token)",
        ),
    ]:
        assert problems(text) == [expected]


def test_a_key_given_twice_is_an_error_naming_both_lines():
    found = problems("""
sinks:
  - type: influxdb_v1
    password: hunter2-first
    url: http://127.0.0.1:8086
    password: hunter2-second
""")
    assert found == [
        "line 6, column 5: not valid YAML: password given twice (first at line 4, column 5)"
    ]


def test_merge_keys_may_still_be_overridden(tcp_probe_driver):
    loaded = load_config_text("""
devices:
  - &probe {name: a, driver: tcp_probe, interval: 10s, address: "127.0.0.1:1"}
  - {<<: *probe, name: b, interval: 20s}
""")
    assert [(d.config.name, d.config.interval) for d in loaded.devices] == [("a", 10), ("b", 20)]


def test_environment_values_never_appear_in_errors(monkeypatch):
    monkeypatch.setenv("QKDTEL_TEST_SECRET", "hunter2-from-env")
    found = problems("""
collector:
  concurrency: ${QKDTEL_TEST_SECRET}
  overflow: ${QKDTEL_TEST_SECRET}
  spool_dir: ${QKDTEL_TEST_SECRET
sinks:
  - {type: "${QKDTEL_TEST_SECRET}", url: "http://127.0.0.1:8086"}
""")
    assert "hunter2" not in "\n".join(found)
    assert sorted(found) == [
        "collector.concurrency (line 3): Input should be a valid integer, unable to parse string"
        " as an integer",
        "collector.overflow (line 4): Input should be 'drop_oldest' or 'reject_new'",
        "collector.spool_dir (line 5): an unfinished ${ reference: write ${NAME} or"
        " ${NAME:-default}",
        "sinks[0] (line 7): 'type' should be one of 'influxdb_v2', 'influxdb_v1', 'file'",
    ]


def test_invalid_utf8_names_line_and_offset_and_a_bom_is_fine(tmp_path):
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_bytes(b"collector:\n  concurrency: 4\nsinks: [{type: file, name: caf\xe9}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problems == ["line 3: not UTF-8 text (invalid byte at offset 58)"]
    cfg.write_bytes(f"\ufeffsinks: [{{type: file, path: '{tmp_path / 'lp'}'}}]\n".encode())
    assert load_config(cfg).config.sinks[0].name == "file"


def test_secret_file_that_is_not_text_is_named_not_shown(tmp_path):
    secret = tmp_path / "token"
    secret.write_bytes(b"hunter2-\xff")
    (problem,) = problems(f"""
sinks:
  - {{type: influxdb_v2, url: "http://127.0.0.1:8086", bucket: b, token_file: "{secret}"}}
""")
    assert problem == f"sinks[0] (line 3): token_file: {secret} is not UTF-8 text"


def test_environment_checks_find_what_run_would_trip_on_and_create_nothing(tmp_path):
    """Only a file loaded to be run is checked against this machine; nothing is created."""
    import certifi

    cfg = tmp_path / "qkdtel.yaml"
    spool = tmp_path / "var" / "lib" / "spool"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    cfg.write_text(f"""
collector: {{spool_dir: "{spool}"}}
sinks:
  - {{type: file, path: "{a_file}/lp"}}
  - {{type: influxdb_v2, url: "https://x:8086", bucket: b, ca_file: "{certifi.where()}"}}
  - {{type: influxdb_v1, url: "https://x:8086", database: d, name: v1, ca_file: "{a_file}"}}
traps: {{listen: "127.0.0.1:0"}}
""")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problems == [
        f"sinks[0].path (line 4): {a_file}/lp cannot be created: {a_file} is not a directory",
        f"sinks[2].ca_file (line 6): {a_file} holds no usable PEM certificate"
        " (NO_CERTIFICATE_OR_CRL_FOUND)",
        "traps.listen (line 7): port 0 would listen on a random port no device sends to;"
        " give 1..65535",
    ]
    assert not (tmp_path / "var").exists()
    # The same text as a document alone: nothing about this machine is asked.
    (traps,) = load_config_text(cfg.read_text()).listeners
    assert (traps.name, traps.type, traps.options.listen) == ("traps", "snmp_traps", "127.0.0.1:0")


def test_trap_listen_must_be_an_address_of_this_machine(tmp_path):
    """IPv4 here; IPv6 (`[::1]:162`, needing IPv6 on loopback): tests/test_traps_ipv6.py."""
    cfg = tmp_path / "qkdtel.yaml"
    for listen, problem in [
        ("127.0.0.1:10162", None),
        ("localhost:10162", None),
        ("::1:10162", "an IPv6 address goes in brackets: [::1]:162, [::]:162"),
        ("127.0.0.1", "expected host:port, e.g. 0.0.0.0:162"),
        ("legan\u00e9s:162", "the host is neither an IPv4 address nor a host name"),
        ("x" * 64 + ":162", f"{'x' * 64} is not an IPv4 address or a name of one"),
        ("192.0.2.1:162", "cannot listen on 192.0.2.1: Cannot assign requested address"),
    ]:
        cfg.write_text(f"traps: {{listen: '{listen}'}}\nsinks: [{{type: file, path: lp}}]\n")
        if problem is None:
            assert load_config(cfg).listeners[0].options.listen == listen
            continue
        with pytest.raises(ConfigError) as info:
            load_config(cfg)
        assert info.value.problems == [f"traps.listen (line 1): {problem}"], listen


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
    grace = json.dumps(schema["$defs"]["CollectorSettings"]["properties"]["shutdown_grace"])
    # a number of seconds (or `10s`, or an ${ENV} reference: tests/test_config_schema.py)
    assert '"exclusiveMinimum": 0, "maximum": 300' in grace
    assert '"gt"' not in result.stdout  # pydantic's own keyword when a bound is not expressed


def test_schema_types_each_listeners_options_and_the_traps_section():
    import jsonschema

    result = run_cli("config", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    traps = schema["$defs"]["Listener_snmp_traps"]
    assert {"type", "name", "listen", "communities", "users"} <= set(traps["properties"])
    validator = jsonschema.Draft202012Validator(schema)
    good = {"listeners": [{"type": "snmp_traps", "listen": "0.0.0.0:162"}]}
    assert not list(validator.iter_errors(good))
    assert not list(validator.iter_errors({"traps": {"listen": "0.0.0.0:162"}}))
    misspelt = {"listeners": [{"type": "snmp_traps", "lissen": "0.0.0.0:162"}]}
    assert list(validator.iter_errors(misspelt)), "a misspelt listener option passed the schema"


def test_listeners_section_is_validated_by_each_listeners_model_with_lines(tmp_path):
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(
        "sinks: [{type: file, path: lp}]\n"
        "listeners:\n"
        "  - {type: snmp_traps, name: noc-traps, listen: '127.0.0.1:10162'}\n"
        "  - {type: snmp_traps, listen: '127.0.0.1'}\n"
        "  - {type: no_such_listener}\n"
        "  - {type: snmp_traps, name: noc-traps, listen: '127.0.0.1:0', bogus: 1}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    problems = info.value.problems
    unknown = "listeners[2].type (line 5): no listener named 'no_such_listener' is installed"
    assert problems[1].startswith(unknown) and "snmp_traps" in problems[1]
    assert problems[:1] + problems[2:] == [
        "listeners[1].listen (line 4): expected host:port, e.g. 0.0.0.0:162",
        "listeners[3].bogus (line 6): Extra inputs are not permitted",
        "listeners[3].name (line 6): names must be unique; listeners[0] has this name too",
    ]


def test_traps_section_and_a_snmp_traps_listener_together_are_refused():
    text = "traps: {listen: '127.0.0.1:10162'}\nlisteners: [{type: snmp_traps}]\n"
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert info.value.problems == [
        "traps (line 1): give either traps or a listener of type snmp_traps"
    ]

"""A third-party distribution adds drivers and a listener through entry-point groups alone."""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import subprocess
import sys
import zipfile

import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from qkdtel.plugins import driver_entry_points, load_driver, load_listener
from tests.collector_run import Recorder, collector_document, written
from tests.fixtures_plugin import PLUGIN_SRC


def qkdtel_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_wheel_declares_the_entry_point(plugin_wheel):
    with zipfile.ZipFile(plugin_wheel) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith("entry_points.txt")]
        text = whl.read(name).decode()
    assert "[qkdtel.drivers]" in text
    assert "tcp_probe = qkdtel_tcp_probe:TcpProbeDriver" in text


def test_installed_plugin_is_discovered(tcp_probe_driver):
    assert "tcp_probe" in driver_entry_points()
    assert load_driver("tcp_probe").__module__ == "qkdtel_tcp_probe"
    listing = qkdtel_cli("drivers")
    assert listing.returncode == 0, listing.stderr
    assert "tcp_probe" in listing.stdout and "qkdtel-tcp-probe 1.0.0" in listing.stdout


def test_plugin_polls_through_the_cli(tmp_path, tcp_probe_driver, tcp_servers):
    address = tcp_servers.banner("OTDR-42 ready")
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(
        "devices:\n"
        f"  - {{name: otdr-mgmt, driver: tcp_probe, address: '{address}', read_banner: true,"
        " tags: {node: Quijote}}\n"
        f"  - {{name: dead, driver: tcp_probe, address: '{tcp_servers.closed()}'}}\n"
    )
    result = qkdtel_cli("poll", "-c", str(cfg), "-f", "line", "--status")
    assert result.returncode == 1  # one device failed
    lines = result.stdout.splitlines()
    probe = [ln for ln in lines if ln.startswith("tcp_probe,")]
    assert len(probe) == 1
    assert "device=otdr-mgmt" in probe[0] and "node=Quijote" in probe[0]
    assert 'banner="OTDR-42 ready"' in probe[0]
    assert any("device=dead" in ln and 'error_class="refused"' in ln for ln in lines)
    assert "dead: refused:" in result.stderr


def test_unknown_driver_named_in_error(tmp_path):
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text("devices:\n  - {name: x, driver: not_installed}\n")
    result = qkdtel_cli("check", "-c", str(cfg))
    assert result.returncode == 2
    assert "devices[0].driver (line 2): no driver named 'not_installed'" in result.stderr


def test_schema_types_each_drivers_options(tcp_probe_driver):
    import json

    import jsonschema

    result = qkdtel_cli("config", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    device = schema["$defs"]["Device_tcp_probe"]
    assert {"address", "read_banner", "interval", "tags"} <= set(device["properties"])
    good = {"devices": [{"name": "a", "driver": "tcp_probe", "address": "127.0.0.1:1"}]}
    jsonschema.validate(good, schema)
    bad = {"devices": [{"name": "a", "driver": "tcp_probe", "adress": "127.0.0.1:1"}]}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert errors, "a misspelt option passed the schema"
    messages = [e.message for err in errors for e in (err, *(err.context or []))]
    assert any("adress" in m for m in messages), messages


def test_wheel_declares_the_listener_and_the_blocking_driver(plugin_wheel):
    with zipfile.ZipFile(plugin_wheel) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith("entry_points.txt")]
        text = whl.read(name).decode()
    assert "[qkdtel.listeners]" in text
    assert "udp_lines = qkdtel_tcp_probe.listener:UdpLinesListener" in text
    assert "tcp_banner = qkdtel_tcp_probe.blocking:TcpBannerDriver" in text


def test_the_plugin_imports_only_the_sdk_of_qkdtel():
    imported = set()
    for path in (PLUGIN_SRC / "src" / "qkdtel_tcp_probe").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert {m for m in imported if m.split(".")[0] == "qkdtel"} == {"qkdtel.sdk"}


def test_installed_listener_is_discovered_and_runs_in_the_daemon(tmp_path, tcp_probe_driver):
    assert load_listener("udp_lines").__module__ == "qkdtel_tcp_probe.listener"
    listing = qkdtel_cli("drivers")
    assert listing.returncode == 0, listing.stderr
    (row,) = [line for line in listing.stdout.splitlines() if "udp_lines" in line]
    assert "listener" in row and "qkdtel-tcp-probe 1.0.0" in row
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    device = {"name": "otdr-mgmt", "driver": "tcp_probe", "address": "127.0.0.1:1", "interval": 60}
    document = collector_document(tmp_path, [{**device, "tags": {"node": "Quijote"}}])
    listen = f"127.0.0.1:{port}"
    document["listeners"] = [{"type": "udp_lines", "name": "lab-push", "listen": listen}]
    loaded = load_config_text(yaml.safe_dump(document))
    assert [(s.name, s.type) for s in loaded.listeners] == [("lab-push", "udp_lines")]
    recorder = Recorder()
    collector = Collector(loaded, observers=[recorder])

    async def scenario() -> None:
        running = asyncio.ensure_future(collector.run(duration=3.0))
        for _ in range(100):  # until the listener is bound and has handed a sample over
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"fibre_temperature_c 21.5", ("127.0.0.1", port))
            await asyncio.sleep(0.05)
            if any(s.measurement == "udp_line" for s in recorder.samples):
                break
        collector.stop()
        await running

    asyncio.run(scenario())
    pushed = [s for s in recorder.samples if s.measurement == "udp_line"]
    assert pushed and pushed[0].fields == {"fibre_temperature_c": 21.5}
    assert pushed[0].tags == {"device": "otdr-mgmt", "node": "Quijote"}
    assert "udp_line,device=otdr-mgmt,node=Quijote fibre_temperature_c=21.5 " in written(tmp_path)

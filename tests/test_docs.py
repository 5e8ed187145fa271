"""What the documentation shows must work: README's configuration example, the driver samples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qkdtel.config import load_config_text

ROOT = Path(__file__).resolve().parent.parent


def yaml_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", markdown.read_text(encoding="utf-8"), re.S)


def test_readme_configuration_example_is_valid(monkeypatch):
    for name in ("INFLUX_TOKEN", "QKD_AUTH", "QKD_PRIV"):
        monkeypatch.setenv(name, f"{name.lower()}-example-secret")
    (block,) = yaml_blocks(ROOT / "README.md")
    loaded = load_config_text(block, "README.md")
    (device,) = loaded.devices
    assert device.config.driver == "qkd_snmp"
    assert loaded.config.sinks[0].token.get_secret_value() == "influx_token-example-secret"


@pytest.mark.parametrize(
    "sample", sorted(ROOT.glob("drivers/*/sample.yaml")), ids=lambda p: p.parent.name
)
def test_driver_sample_configs_are_valid(sample, monkeypatch, tmp_path):
    text = sample.read_text(encoding="utf-8")
    for var in set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text)):
        monkeypatch.setenv(var, "example-secret-value")
    secret = tmp_path / "secret"
    secret.write_text("example-secret-value\n")
    # `<secret>_file:` paths name files on a production host; point them at a real file here.
    text = re.sub(r"(\w+_file): *\S+", rf"\1: {secret}", text)
    loaded = load_config_text(text, str(sample))
    assert loaded.devices, f"{sample} configures no device"
    assert {d.config.driver for d in loaded.devices} == {sample.parent.name}


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(encoding="utf-8"), re.S)


def test_readme_plugin_examples_run_against_real_sockets():
    import asyncio
    import socket

    from qkdtel.sdk import Driver, Listener, ListenerContext, Refused

    driver_code, listener_code = python_blocks(ROOT / "README.md")
    driver_ns: dict = {}
    exec(compile(driver_code, "README.md (driver)", "exec", dont_inherit=True), driver_ns)
    listener_ns: dict = {}
    exec(compile(listener_code, "README.md (listener)", "exec", dont_inherit=True), listener_ns)
    ping, push = driver_ns["PingDriver"], listener_ns["PushListener"]
    assert issubclass(ping, Driver) and ping.options_model is driver_ns["PingOptions"]
    assert issubclass(push, Listener) and push.options_model is listener_ns["PushOptions"]

    with socket.create_server(("127.0.0.1", 0)) as server:
        listening = f"127.0.0.1:{server.getsockname()[1]}"
    driver = ping("mgmt", ping.options_model(address=listening), 1.0)
    with pytest.raises(Refused) as refused:
        asyncio.run(driver.poll())
    assert isinstance(refused.value.__cause__, ConnectionRefusedError)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def receive() -> list:
        got: list = []

        async def emit(samples):
            got.extend(samples)

        listener = push("push", push.options_model(port=port))
        await listener.start(emit, ListenerContext())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"fibre_temperature_c 21.5", ("127.0.0.1", port))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        await listener.stop()
        return got

    (sample,) = asyncio.run(receive())
    assert (sample.measurement, dict(sample.fields)) == ("udp_line", {"fibre_temperature_c": 21.5})

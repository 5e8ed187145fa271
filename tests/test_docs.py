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

"""Config conveniences: `defaults:` (interval, timeout and tags of every device) and `include:`
(a conf.d directory of files adding sinks, listeners and devices in name order), with errors
naming the included file and its line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qkdtel.config import ConfigError, load_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def main_file(tmp_path: Path, extra: str = "") -> Path:
    return write(
        tmp_path / "qkdtel.yaml",
        f"""\
        collector: {{spool_dir: {tmp_path}/spool}}
        sinks: [{{type: file, path: {tmp_path}/lp}}]
        defaults:
          interval: 30s
          timeout: 2s
          tags: {{domain: RM, network: madqci}}
        include: conf.d
        devices:
          - {{name: main-a, driver: qkd_snmp, address: 10.0.0.1, profile: toshiba, interval: 5s}}
        {extra}""",
    )


SITE = """\
devices:
  - name: {name}
    driver: qkd_snmp
    address: 10.0.0.{n}
    profile: toshiba
    tags: {{node: {node}, domain: {domain}}}
"""


def test_defaults_and_included_devices_merge_in_name_order(tmp_path):
    cfg = main_file(tmp_path)
    write(
        tmp_path / "conf.d" / "20-norte.yaml", SITE.format(name="norte", n=3, node="N", domain="X")
    )
    write(tmp_path / "conf.d" / "10-sur.yaml", SITE.format(name="sur", n=2, node="S", domain="RM"))
    write(tmp_path / "conf.d" / "README.txt", "not a configuration: left alone\n")
    loaded = load_config(cfg)
    devices = {d.config.name: d.config for d in loaded.devices}
    assert list(devices) == ["main-a", "sur", "norte"]  # main file first, then by file name
    assert devices["main-a"].interval == 5.0 and devices["main-a"].timeout == 2.0
    assert devices["sur"].interval == 30.0
    assert devices["main-a"].tags == {"domain": "RM", "network": "madqci"}
    assert devices["norte"].tags == {"domain": "X", "network": "madqci", "node": "N"}  # own wins


def test_an_error_in_an_included_file_names_that_file_and_line(tmp_path):
    cfg = main_file(tmp_path)
    write(tmp_path / "conf.d" / "10-ok.yaml", SITE.format(name="sur", n=2, node="S", domain="RM"))
    bad = write(
        tmp_path / "conf.d" / "20-bad.yaml",
        """\
        # site Norte
        devices:
          - name: norte
            driver: qkd_snmp
            address: 10.0.0.3
            profile: no-such-profile
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{bad}: devices[0].profile (line 6):"), problem


def test_an_included_file_with_other_keys_or_bad_yaml_is_refused(tmp_path):
    cfg = main_file(tmp_path)
    odd = write(tmp_path / "conf.d" / "10-odd.yaml", "devices: []\ncollector: {concurrency: 2}\n")
    broken = write(tmp_path / "conf.d" / "20-broken.yaml", "devices: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(cfg)
    problems = "\n".join(caught.value.problems)
    assert f"{odd} (line 2): an included file holds only lists of" in problems
    assert f"{broken}: line 2, column 1: not valid YAML" in problems


def test_check_reports_a_missing_include_directory_with_exit_2(tmp_path):
    cfg = main_file(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "check", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"include (line 7): cannot read the directory {tmp_path}/conf.d" in result.stderr
    assert "Traceback" not in result.stderr

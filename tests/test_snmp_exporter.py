"""Prometheus snmp_exporter scrapes QKD modules with the modules qkdtel ships.

packaging/snmp_exporter/snmp.yml is generated from generator.yml and mibs/ by Debian's
prometheus-snmp-generator (scripts/snmp_exporter_config.py); here the committed file is checked
fresh, then Debian's prometheus-snmp-exporter runs it against each vendor family's simulated
agent (real UDP SNMP) and its /snmp output must hold the QKD metrics, per link, with the values
qkdtel's own driver reads from the same agent.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from qkdtel.drivers.qkd_snmp import QkdSnmpDriver
from qkdtel.sims.clock import ManualClock
from tests.fixtures_hil import driver_options
from tests.fixtures_scpi import free_tcp_port
from tests.fixtures_snmp import require_tools

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging" / "snmp_exporter"

# profile -> (exporter module, per-link metric, link label, qkdtel field, scale to qkdtel's unit)
FAMILIES = {
    "cerberis3": ("qkd_cerberis3", "cerbLinkQber", "cerbLinkId", "qber", 1e-4),
    "toshiba": ("qkd_toshiba", "tqkdLinkQberPpm", "tqkdLinkName", "qber", 1e-6),
    "hwdu_cv": (
        "qkd_hwdu_cv",
        "hwcvChannelExcessNoise",
        "hwcvChannelLink",
        "excess_noise_snu",
        1e-6,
    ),
    "ait_cv": ("qkd_ait_cv", "aitcvLinkExcessNoise", "aitcvLinkId", "excess_noise_snu", 1.0),
}


def test_committed_snmp_yml_is_what_the_generator_makes():
    require_tools("prometheus-snmp-generator")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "snmp_exporter_config.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[callable]:
    """Start Debian's exporter on snmp.yml with the given v2c community; yields its URL."""
    started: list[subprocess.Popen] = []

    def start(community: str) -> str:
        require_tools("prometheus-snmp-exporter")
        config = yaml.safe_load((PACKAGING / "snmp.yml").read_text())
        for module in config.values():
            module["auth"] = {"community": community}
        (tmp_path / "snmp.yml").write_text(yaml.safe_dump(config))
        port = free_tcp_port()
        proc = subprocess.Popen(
            [
                "prometheus-snmp-exporter",
                f"--config.file={tmp_path / 'snmp.yml'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "exporter.log").open("w"),
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "exporter.log").read_text()
            try:
                httpx.get(f"{url}/metrics", timeout=1).raise_for_status()
                return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("snmp_exporter did not come up")

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def qkdtel_reading(device: dict, field: str) -> list[tuple[str, float]]:
    """qkdtel's own driver on the same agent: (link, `field`) of each qkd_link point, sorted
    (a CV module has several channels per link)."""
    driver = QkdSnmpDriver(device["name"], driver_options(device), timeout=10.0)

    async def main() -> list:
        try:
            return await driver.poll()
        finally:
            await driver.aclose()

    samples = asyncio.run(main())
    return sorted((s.tags["link"], s.fields[field]) for s in samples if s.measurement == "qkd_link")


@pytest.mark.parametrize("profile", sorted(FAMILIES))
def test_exporter_scrapes_the_qkd_metrics_of_each_family(profile, single_agent, exporter):
    module, metric, link_label, field, scale = FAMILIES[profile]
    sim = single_agent(profile, clock=ManualClock(start=5000.0))  # values hold still
    url = exporter(sim.credentials.community)
    response = httpx.get(
        f"{url}/snmp", params={"module": module, "target": f"{sim.host}:{sim.port}"}, timeout=30
    )
    response.raise_for_status()
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["snmp_scrape_pdus_returned"].samples[0].value > 0
    scraped = sorted((s.labels[link_label], s.value * scale) for s in families[metric].samples)
    expected = qkdtel_reading(sim.device, field)
    assert scraped, f"no {metric} in the exporter's output"
    assert [link for link, _ in scraped] == [link for link, _ in expected]
    assert [v for _, v in scraped] == pytest.approx([v for _, v in expected], rel=1e-6, abs=1e-9)

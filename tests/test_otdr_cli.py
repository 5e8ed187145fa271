"""`qkdtel sims otdr` and `qkdtel sims powermeter` as an operator runs them: child processes
serving real instruments, polled by the drivers through the configuration they write."""

from __future__ import annotations

import asyncio

import pytest

from qkdtel.config import load_config
from qkdtel.drivers.powermeter import PowerMeterDriver
from qkdtel.drivers.powermeter.driver import PowerMeterOptions
from qkdtel.poller import DevicePoller
from tests.sims_cli import refused, start, stop


def test_sims_otdr_serves_the_links_with_faults(tmp_path):
    config = tmp_path / "otdr.yaml"
    process = start(
        [
            "otdr",
            "--link",
            "9",
            "--link",
            "5",
            "--speed",
            "600",
            "--added-loss",
            "9:1200:0.7",
            "--config-out",
            str(config),
        ],
        config,
        tmp_path / "otdr.log",
    )
    try:
        loaded = load_config(config)
        assert [d.config.name for d in loaded.devices] == ["otdr-link-9", "otdr-link-5"]

        async def poll_all():
            pollers = [DevicePoller.create(d, max_backoff=10) for d in loaded.devices]
            try:
                return [await p.poll() for p in pollers]
            finally:
                for p in pollers:
                    await p.aclose()

        results = asyncio.run(poll_all())
    finally:
        assert stop(process) == 0
    assert all(r.ok for r in results), [r.error for r in results]
    traces = {
        r.device: next(s for s in r.samples if s.measurement == "otdr_trace") for r in results
    }
    assert traces["otdr-link-9"].fields["total_loss_db"] == pytest.approx(2.0 + 0.7, abs=0.05)
    assert traces["otdr-link-5"].fields["fibre_length_m"] == pytest.approx(5500, abs=1)
    assert (
        "otdr-link-9" in (tmp_path / "otdr.log").read_text()
        or "TCPIP" in (tmp_path / "otdr.log").read_text()
    )


def test_sims_otdr_refuses_unknown_links(tmp_path):
    done = refused(["otdr", "--link", "99"])
    assert done.returncode == 2
    assert "no link 99 in madqci-twin" in done.stderr


def test_sims_powermeter_serves_a_serial_port(tmp_path):
    path = tmp_path / "ttyPM"
    process = start(["powermeter", "--path", str(path), "--link", "1"], path, tmp_path / "pm.log")
    try:
        options = PowerMeterOptions.model_validate({"visa": {"resource": f"ASRL{path}::INSTR"}})
        meter = PowerMeterDriver("pm", options, 3.0)
        try:
            (sample,) = meter.poll_blocking()
        finally:
            asyncio.run(meter.aclose())
    finally:
        assert stop(process) == 0
    assert sample.fields["power_dbm"] == pytest.approx(-14.3, abs=0.1)  # link 1: 14.3 dB

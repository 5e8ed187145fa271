"""Partial data: a QKD module that lacks one MIB object still has everything else written.

Like Telegraf and snmp_exporter, a firmware that dropped a column or a scalar costs that
object only: the poll is up, `degraded`, and its status names what was missing. Against a real
simulated SNMP agent (tests/fixtures_snmp.py, `missing=`).
"""

from __future__ import annotations

import asyncio

import yaml

from qkdtel.config import load_config_text
from qkdtel.poller import DevicePoller, PollResult


def poll_once(device_entry: dict) -> PollResult:
    """One poll of the device through the collector's own poller (status point included)."""
    loaded = load_config_text(yaml.safe_dump({"devices": [device_entry]}))
    (device,) = loaded.devices

    async def main() -> PollResult:
        poller = DevicePoller.create(device, max_backoff=60.0)
        try:
            return await poller.poll()
        finally:
            await poller.aclose()

    return asyncio.run(main())


def test_a_missing_column_degrades_the_poll_and_names_it(single_agent):
    sim = single_agent("cerberis3", missing=("cerbLinkVisibility", "cerbLaserTemperature"))
    result = poll_once(sim.device)
    assert result.ok and result.degraded
    status = dict(result.status.fields)
    assert status["up"] is True and status["degraded"] is True
    assert status["missing"] == "cerbLaserTemperature.0,cerbLinkVisibility"
    assert status["error_class"] == ""
    links = [s for s in result.samples if s.measurement == "qkd_link"]
    assert links and all("qber" in s.fields and "visibility" not in s.fields for s in links)
    assert status["samples"] == len(result.samples) == len(links) + 1


def test_a_complete_poll_is_not_degraded(single_agent):
    sim = single_agent("cerberis3")
    result = poll_once(sim.device)
    assert result.ok and not result.degraded
    assert (result.status.fields["degraded"], result.status.fields["missing"]) == (False, "")

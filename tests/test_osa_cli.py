"""`qkdtel sims osa` as an operator runs it: a child process serving simulated analysers with
faults, polled through the configuration it writes; bad arguments are refused by name."""

from __future__ import annotations

import asyncio
import re

import pytest

from qkdtel.config import load_config
from qkdtel.poller import DevicePoller
from tests.sims_cli import refused, start, stop


def test_sims_osa_serves_links_with_faults(tmp_path):
    config = tmp_path / "osa.yaml"
    process = start(
        [
            "osa",
            "--dialect",
            "anritsu",
            "--sweep-time",
            "0.05",
            "--added-loss",
            "8:3",
            "--error",
            "4:RES:-221:Settings conflict",
            "--vxi11",
            "--config-out",
            str(config),
        ],
        config,
        tmp_path / "osa.log",
    )
    try:
        loaded = load_config(config)

        async def poll_all():
            pollers = [DevicePoller.create(d, max_backoff=10) for d in loaded.devices]
            try:
                return {p.name: await p.poll() for p in pollers}
            finally:
                for p in pollers:
                    await p.aclose()

        results = asyncio.run(poll_all())
    finally:
        assert stop(process) == 0
    assert sorted(results) == ["osa-link-4", "osa-link-8"]
    link4, link8 = results["osa-link-4"], results["osa-link-8"]
    assert link4.error_class == "instrument_error"
    assert link4.error.endswith("'RES 0.05' failed: -221,\"Settings conflict\"")
    assert link8.ok, link8.error
    sweep = next(s for s in link8.samples if s.measurement == "osa_sweep")
    assert sweep.fields["occupied_channels"] == "25,29,34,59,60"
    powers = [
        s.fields["power_dbm"]
        for s in link8.samples
        if s.measurement == "osa_channel" and s.tags["channel"] in ("25", "29", "34")
    ]
    # launch 0 dBm - 11.8 dB (link 8) - 10 dB tap - 3 dB added loss
    assert powers == pytest.approx([-24.8] * 3, abs=0.2)
    shown = (tmp_path / "osa.log").read_text()
    assert "TCPIP::127.0.0.1::" in shown and "+3 dB" in shown
    assert re.search(r"TCPIP::127\.0\.0\.1,\d+::INSTR", shown)  # the VXI-11 resource


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--link", "5"], "no channel plan for link '5' (known: 3, 4, 8)"),
        (["--stall", "9"], "--stall: link 9 is not simulated"),
        (["--truncate", "4:half"], "--truncate 4: use cut or short, not 'half'"),
        (["--error", "4:NOPE:-1:x"], "the yokogawa simulator has no 'NOPE'"),
        (["--error", "4:RES:222:x"], "HEADER:CODE:MESSAGE with a SCPI code < 0"),
    ],
)
def test_bad_arguments_are_refused_by_name(args, why):
    done = refused(["osa", *args])
    assert done.returncode == 2
    assert why in done.stderr.replace("\n", " "), done.stderr

"""The OSA inside the daemon: a slow sweep runs in a worker thread, so a fast device keeps its
pace; two devices configured on one analyser (one resource) never drive it at once."""

from __future__ import annotations

import asyncio
import itertools

import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from tests.collector_run import Recorder, collector_document, written


def test_a_slow_sweep_does_not_delay_a_fast_device(tmp_path, osa_sim):
    slow = osa_sim("yokogawa", "4", sweep_time_s=1.2)
    fast = osa_sim("anritsu", "8", sweep_time_s=0.01)
    devices = [
        slow.device("osa-l4", interval=0.5, timeout=5),
        # a second device on the same analyser, spelled differently: same instrument
        slow.device(
            "osa-l4-50ghz",
            interval=0.5,
            timeout=5,
            grid_ghz=50,
            visa={"resource": slow.sim.resource.replace("TCPIP::", "TCPIP0::")},
        ),
        fast.device("osa-l8", interval=0.1, timeout=2, points=501),
    ]
    document = collector_document(tmp_path, devices, self_telemetry_interval=5)
    loaded = load_config_text(yaml.safe_dump(document))
    recorder = Recorder()
    asyncio.run(Collector(loaded, observers=[recorder]).run(duration=3.5))

    statuses = recorder.statuses()
    polls = {name: statuses[name] for name in ("osa-l4", "osa-l4-50ghz", "osa-l8")}
    for name, done in polls.items():
        assert done and all(s.fields["up"] for s in done), (name, [s.fields for s in done])
    slow_polls = polls["osa-l4"] + polls["osa-l4-50ghz"]
    assert all(s.fields["poll_duration_s"] >= 1.2 for s in slow_polls)
    # one sweep at a time on the shared analyser: 3 in the 3.5 s, the last one finishing
    # during shutdown; a poll waiting for the other device's sweep lasts longer
    assert 3 <= len(slow_polls) <= 4, len(slow_polls)
    assert max(s.fields["poll_duration_s"] for s in slow_polls) >= 2.3
    # ~35 scheduled polls of the fast OSA in 3.5 s, none held up by the slow sweeps
    fast_polls = polls["osa-l8"]
    assert len(fast_polls) >= 15, len(fast_polls)  # of ~35: a loaded CI machine loses some
    times = [s.time_ns / 1e9 for s in fast_polls]
    # held up would mean a gap or a poll as long as a sweep (1.2 s and more)
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.9
    assert all(s.fields["poll_duration_s"] < 0.9 for s in fast_polls)

    # the shared analyser's captures never interleave: each configuration runs to its trace
    commands = [r.text for r in slow.sim.received()]
    starts = [i for i, c in enumerate(commands) if c.startswith(":SENSe:WAVelength:STARt")]
    reads = [i for i, c in enumerate(commands) if c == ":TRACe:Y? TRA"]
    assert len(starts) == len(slow_polls) and len(reads) == len(slow_polls)
    assert all(s < r for s, r in zip(starts, reads, strict=True))
    assert all(r < s for r, s in zip(reads, starts[1:], strict=False))
    assert {r.connection for r in slow.sim.received()} == {1}  # one shared connection

    grids = {s.tags["grid"] for s in recorder.samples if s.measurement == "osa_channel"}
    assert grids == {"100", "50"}
    lines = written(tmp_path)
    assert "osa_sweep,device=osa-l4,dialect=yokogawa,grid=100,link=4" in lines
    assert "osa_quantum_channel,channel=37,device=osa-l4" in lines
    assert 'occupied_channels="25,29,34,59,60"' in lines

"""The OTDR inside the daemon: a long acquisition occupies a worker thread, never the event
loop, so a fast device (the bench power meter on its serial line) keeps its pace; and the
OTDR is never driven by two polls at once, however its interval compares with its acquisition."""

from __future__ import annotations

import asyncio
import itertools

import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector
from tests.collector_run import Recorder, collector_document, written


def test_a_long_acquisition_does_not_delay_a_fast_device(tmp_path, otdr_sim, power_meter):
    bench = otdr_sim("8", speed=20)  # 30 s of averaging: 1.5 s per acquisition
    otdr = bench.options().model_dump(mode="json", exclude_none=True)
    meter = power_meter.options().model_dump(mode="json", exclude_none=True)
    devices = [
        {"name": "otdr-l8", "driver": "otdr", "interval": 0.5, "timeout": 10, **otdr},
        {"name": "bench-pm", "driver": "powermeter", "interval": 0.1, "timeout": 1, **meter},
    ]
    document = collector_document(tmp_path, devices, self_telemetry_interval=5)
    loaded = load_config_text(yaml.safe_dump(document))
    recorder = Recorder()
    asyncio.run(Collector(loaded, observers=[recorder]).run(duration=3.5))

    statuses = recorder.statuses()
    meter_polls, otdr_polls = statuses["bench-pm"], statuses["otdr-l8"]
    assert otdr_polls and all(s.fields["up"] for s in otdr_polls), [s.fields for s in otdr_polls]
    assert all(s.fields["poll_duration_s"] >= 1.4 for s in otdr_polls)
    # ~35 scheduled meter polls in 3.5 s; none held up while the OTDR acquired
    assert len(meter_polls) >= 15, len(meter_polls)  # of ~35: a loaded CI machine loses some
    assert all(s.fields["up"] for s in meter_polls)
    times = [s.time_ns / 1e9 for s in meter_polls]
    # held up would mean a gap or a poll as long as an acquisition (1.5 s)
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.9
    assert all(s.fields["poll_duration_s"] < 0.9 for s in meter_polls)
    # interval 0.5 s, acquisition 1.5 s: the poller skips runs rather than overlapping them
    assert len(otdr_polls) <= 3
    connections = {r.connection for r in bench.sim.received()}
    assert len(connections) == 1  # one connection, one job at a time

    traces = [s for s in recorder.samples if s.measurement == "otdr_trace"]
    assert traces and traces[0].tags["device"] == "otdr-l8"
    assert traces[0].fields["fibre_length_m"] == 33_100.0
    lines = written(tmp_path)
    assert "otdr_trace,device=otdr-l8" in lines and "optical_power,channel=1" in lines

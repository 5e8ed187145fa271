"""Issue 4's acceptance end to end: the OSA, OTDR and power-meter drivers in the daemon against
their simulators, their points arriving in a real InfluxDB, queried back by name."""

from __future__ import annotations

import asyncio

import yaml

from qkdtel.config import load_config_text
from qkdtel.daemon import Collector


def test_optical_instruments_feed_influxdb(
    tmp_path, influxdb, influx_db, osa_sim, otdr_sim, power_meter
):
    osa = osa_sim("yokogawa", "4")
    otdr = otdr_sim("8", speed=200).options().model_dump(mode="json", exclude_none=True)
    meter = power_meter.options().model_dump(mode="json", exclude_none=True)
    document = {
        "collector": {"spool_dir": str(tmp_path / "spool"), "flush_interval": 0.2},
        "sinks": [{"type": "influxdb_v1", "url": influxdb.url, "database": influx_db}],
        "devices": [
            osa.device("osa-quevedo", interval=1, timeout=5, tags={"node": "Quevedo"}),
            {"name": "otdr-l8", "driver": "otdr", "interval": 1, "timeout": 10, **otdr},
            {"name": "bench-pm", "driver": "powermeter", "interval": 0.5, "timeout": 2, **meter},
        ],
    }
    loaded = load_config_text(yaml.safe_dump(document))
    asyncio.run(Collector(loaded).run(duration=3.0))

    occupied = influxdb.query(
        "SELECT last(power_dbm) FROM osa_channel WHERE device = 'osa-quevedo' "
        'AND occupied = true GROUP BY "channel"',
        influx_db,
    )
    assert {r["channel"] for r in occupied} >= {"21", "22", "23", "30"}
    notch = influxdb.query(
        'SELECT last(notch_depth_db) FROM osa_quantum_channel GROUP BY "channel"', influx_db
    )
    assert {r["channel"] for r in notch} == {"37", "38"} and all(r["last"] > 10 for r in notch)
    (trace,) = influxdb.query(
        "SELECT last(fibre_length_m), last(total_loss_db) FROM otdr_trace WHERE device = 'otdr-l8'",
        influx_db,
    )
    assert abs(trace["last"] - 33_100) < 50 and abs(trace["last_1"] - 11.8) < 0.3
    (power,) = influxdb.query("SELECT last(power_dbm) FROM optical_power", influx_db)
    assert -13 < power["last"] < -10
    status = influxdb.query(
        'SELECT count(up) FROM qkdtel_device_status WHERE up = false GROUP BY "device"',
        influx_db,
    )
    assert status == [], status

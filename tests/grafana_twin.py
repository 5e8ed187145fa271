"""The MadQCI twin, the real daemon and a real InfluxDB run together for the Grafana tests.

`twin_run` starts `qkdtel sims up` (the whole twin, in a child process, time accelerated), points
`qkdtel run` (the daemon, another child) at it with two sinks, the test suite's `influxd` and
one on a closed port (the spool that grows), and waits until every device family has reported.
Of the twin's SD-QKD nodes one is polled (a site no fault touches), for the per-application
key consumption (`qkd_app`); the collector runs as shard 0 of 1 so that its points carry the
shard tag the collector health dashboard groups by.
The tests then drive faults the way an operator would, across process boundaries: the twin's
control API through `qkdtel sims fault`, cross-connects through `qkdtel switch move` over
NETCONF. Nothing here reaches into the simulators' objects.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qkdtel.sims.demo import free_udp_ports
from qkdtel.sims.influxd import InfluxServer, free_port
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.twin.control import control_file, resolve

QKDTEL = [sys.executable, "-m", "qkdtel.cli"]
SIMS = [sys.executable, "-m", "qkdtel.sims"]

SPEED = 600.0
"""Simulated seconds per real second: key stocks move and maintenance windows come by within
the few minutes the tests run."""
INTERVAL_S = 5.0
"""Poll interval of every device: several polls of each within a minute, about 15 polls a second
in all (what two shared cores keep answering in time at 600x)."""

FAMILIES = (
    "qkd_link",
    "qkd_module",
    "qkdtel_device_status",
    "qkdtel_collector",
    "osa_channel",
    "osa_quantum_channel",
    "otdr_trace",
    "optical_power",
    "optical_switch",
    "optical_switch_port",
    "kme_key_store",
    "qrng",
    "encryptor",
    "encryptor_association",
    "qkd_app",
)
"""Measurements every healthy twin writes (events come with faults only)."""

SDQKD_SITE = "Quintana"
"""The SD-QKD node polled (for `qkd_app`): a site no fault touches, at the sending end of its
link (a node lists the applications of its transmitters)."""

LIVE_SINK = "influx"
DEAD_SINK = "unreachable"


@dataclass
class TwinRun:
    """What the tests reach: the store, the daemon's config (for `qkdtel switch`), the twin's
    control API, and the generated sims config (its devices)."""

    influx: InfluxServer
    db: str
    workdir: Path
    config_path: Path
    control: str
    sims: SimsProcess

    def query(self, q: str) -> list[dict[str, Any]]:
        return self.influx.query(q, self.db)

    def measurements(self) -> set[str]:
        return {row["name"] for row in self.query("SHOW MEASUREMENTS")}

    def devices_reporting(self) -> set[str]:
        """Devices that have answered a poll."""
        rows = self.query(
            'SELECT last("up") FROM "qkdtel_device_status" WHERE "up" = true GROUP BY "device"'
        )
        return {row["device"] for row in rows}


def daemon_document(
    sims_config: dict[str, Any], workdir: Path, influx: InfluxServer, db: str
) -> dict[str, Any]:
    """The generated twin config (its `polled` devices) plus a spool, the live sink and the
    unreachable one; the collector runs as shard 0 of 1 (its points carry the shard tag)."""
    listeners = {k: sims_config[k] for k in ("traps", "listeners") if k in sims_config}
    devices = polled(sims_config["devices"])
    return {
        "collector": {
            "spool_dir": str(workdir / "spool"),
            "self_telemetry_interval": 1,
            "flush_interval": 0.2,
            "shard": {"index": 0, "count": 1},
        },
        "sinks": [
            {"type": "influxdb_v1", "name": LIVE_SINK, "url": influx.url, "database": db},
            {
                "type": "influxdb_v1",
                "name": DEAD_SINK,
                "url": f"http://127.0.0.1:{free_port()}",  # nothing listens: refused
                "database": db,
            },
        ],
        **listeners,
        "devices": [{**d, "interval": INTERVAL_S} for d in devices],
    }


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 1.0):
    """Poll `check` until it returns something true (returned); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@contextlib.contextmanager
def daemon(config_path: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`qkdtel run -c CONFIG` in a child process, stopped with SIGTERM (flushing) at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*QKDTEL, "run", "-c", str(config_path)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def every_family_reported(run: TwinRun, device_names: set[str]) -> bool:
    """Each family's measurement is stored and every configured device answered lately."""
    missing = set(FAMILIES) - run.measurements()
    return not missing and device_names <= run.devices_reporting()


def polled(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The twin's devices the daemon polls: all, but of the SD-QKD nodes (one per site, their
    links repeating the modules') only the one at SDQKD_SITE, for the per-application key
    consumption (`qkd_app`) without doubling every link's points."""
    return [d for d in devices if d["driver"] != "sdqkd_node" or d["tags"]["node"] == SDQKD_SITE]


@contextlib.contextmanager
def twin_run(workdir: Path, influx: InfluxServer, db: str) -> Iterator[TwinRun]:
    """The twin and the daemon running into `db`, once every family has reported."""
    sims_config = workdir / "sims.yaml"
    args = ["--speed", f"{SPEED:g}", "--interval", f"{INTERVAL_S:g}"]
    args += ["--families", "snmp,switches,keys,optics,sdqkd"]
    args += ["--trap-target", f"127.0.0.1:{free_udp_ports(1)}"]
    with SimsProcess(sims_config, args, start_timeout=120) as sims:
        document = daemon_document(sims.config, workdir, influx, db)
        config_path = workdir / "qkdtel.yaml"
        config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        control = resolve(str(sims_config))
        assert control_file(sims_config).exists()
        run = TwinRun(influx, db, workdir, config_path, control, sims)
        with daemon(config_path, workdir / "daemon.log") as process:
            names = {d["name"] for d in document["devices"]}
            try:
                wait_for(
                    "every family and device to report",
                    lambda: process.poll() is None and every_family_reported(run, names),
                    timeout=180,
                )
            except AssertionError as exc:
                missing = sorted(set(FAMILIES) - run.measurements())
                silent = sorted(names - run.devices_reporting())
                log = (workdir / "daemon.log").read_text(errors="replace")[-3000:]
                raise AssertionError(
                    f"{exc}: measurements missing {missing}, devices silent {silent}\n{log}"
                ) from None
            yield run


def sims_fault(run: TwinRun, *args: str) -> str:
    """`qkdtel sims fault --control URL ARGS`, as an operator types it; its output."""
    done = subprocess.run(
        [*SIMS, "fault", "--control", run.control, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"sims fault {args}: {done.stdout}{done.stderr}"
    return done.stdout


def switch(run: TwinRun, *args: str) -> str:
    """`qkdtel switch ARGS` over NETCONF on the twin's switches (the guarded operator path)."""
    done = subprocess.run(
        [*QKDTEL, "switch", args[0], "-c", str(run.config_path), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"switch {args}: {done.stdout}{done.stderr}"
    return done.stdout

"""Pytest fixtures for the OTDR and the bench power meter, against their simulators.

Fixtures
--------
``otdr_sim`` (function scope, a factory)
    ``otdr_sim(link="8", *, speed=100.0, loopback=False, seed=0)`` serves an `OtdrSim` testing
    that link of the MadQCI twin on a free loopback TCP port (acquisitions accelerated
    ``speed`` times: 30 s of averaging take 0.3 s) and returns an `OtdrBench`: ``sim``,
    ``thread`` (touch the sim while serving through ``thread.call(fn)``), ``link`` (the
    topology `Link`), ``route`` (the fibre's ground truth) and ``options(**overrides)``, the
    ``OtdrOptions`` of a device polling it. Stopped after the test.

``power_meter`` (function scope)
    A `PowerMeterSim` reading link 8 (11.8 dB) on a pty behind ``tmp_path/ttyPM``; returns a
    `MeterBench`: ``sim``, ``line`` (`SerialLine`: ``pull()``, ``replug()``, ``resource``) and
    ``options(**overrides)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from qkdtel.drivers.otdr.options import OtdrOptions
from qkdtel.drivers.powermeter.driver import PowerMeterOptions
from qkdtel.sims.otdr.fibre import FibreRoute, route_for_link
from qkdtel.sims.otdr.instrument import OtdrSim
from qkdtel.sims.scpi import ServerThread
from qkdtel.sims.serial_meter import PowerMeterSim, SerialLine
from qkdtel.sims.topology import Link, load_topology


@dataclass
class OtdrBench:
    sim: OtdrSim
    thread: ServerThread
    link: Link
    route: FibreRoute

    def options(self, **overrides: Any) -> OtdrOptions:
        document = {
            "visa": {"resource": self.sim.resource, "timeout": 2},
            "link": self.link.id,
            "range_m": max(2 * self.route.length_m, 5000.0),
            "averaging": 30,
            "progress_interval": 0.02,
            **overrides,
        }
        return OtdrOptions.model_validate(document)


@pytest.fixture
def otdr_sim() -> Iterator[Any]:
    started: list[ServerThread] = []
    links = {link.id: link for link in load_topology().links}

    def start(
        link: str = "8", *, speed: float = 100.0, loopback: bool = False, seed: int = 0
    ) -> OtdrBench:
        route = route_for_link(links[link], loopback=loopback)
        sim = OtdrSim(route, speed=speed, seed=seed)
        thread = ServerThread([sim]).start()
        started.append(thread)
        return OtdrBench(sim, thread, links[link], route)

    yield start
    for thread in started:
        thread.stop()


@dataclass
class MeterBench:
    sim: PowerMeterSim
    line: SerialLine

    def options(self, **overrides: Any) -> PowerMeterOptions:
        document = {
            "visa": {"resource": self.line.resource, "timeout": 1, "baud_rate": 115200},
            "heads": [{"link": "8"}],
            **overrides,
        }
        return PowerMeterOptions.model_validate(document)


@pytest.fixture
def power_meter(tmp_path) -> Iterator[MeterBench]:
    link = next(link for link in load_topology().links if link.id == "8")
    sim = PowerMeterSim.for_link(link)
    with SerialLine(sim, tmp_path / "ttyPM") as line:
        yield MeterBench(sim, line)

"""Pytest fixtures for SCPI instruments: any simulated `ScpiServer`, and the simulated OSAs.

Fixtures
--------
``scpi_sim`` (function scope, a factory)
    ``scpi_sim(server, *, pty=False, vxi11=False)`` serves any `ScpiServer` (a subclass from
    `sims/`, or one a test defines) on a free loopback TCP port (``server.resource``) -- with
    ``pty=True`` on a pseudo-terminal too (``server.serial_resource``, an
    ``ASRL/dev/pts/N::INSTR`` resource that pyvisa-py opens through pyserial like a real serial
    port), with ``vxi11=True`` over VXI-11 too (``server.instr_resource``,
    ``TCPIP::127.0.0.1,<port>::INSTR``). Returns the `ServerThread` (``.servers``,
    ``.call(fn)``). Stopped after the test.

``osa_sim`` (function scope, a factory)
    ``osa_sim(dialect="yokogawa", link="4", *, sweep_time_s=0.02, seed=0, pty=False,
    vxi11=False)``
    starts an `OsaSimulator` (``yokogawa``: AQ6370 class, binary traces; ``anritsu``: MS9740A
    class, ASCII traces) showing that link of the MadQCI twin (``4`` or ``8``: the published
    channel plans) and returns an `OsaBench`:

    - ``sim``: the simulator; fault knobs in ``sim.faults`` (``stall``, ``errors``,
      ``truncate_blocks``, ``added_loss_db``), ground truth in ``sim.spectrum`` (carriers,
      notch channels, noise) and ``sim.last_sweep``, every command received in
      ``sim.received()``;
    - ``thread``: its `ServerThread`;
    - ``options(**overrides)``: validated `OsaOptions` of a device polling it (VISA timeout
      1 s, high2 sensitivity, the link's C-band quantum channels for the notch analysis);
    - ``device(name, **overrides)``: the same as a collector ``devices:`` entry (a dict).

Helper: ``free_tcp_port()``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from qkdtel.drivers.osa.options import OsaOptions
from qkdtel.sims.osa import OsaSimulator
from qkdtel.sims.scpi import ScpiServer, ServerThread


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class OsaBench:
    """A running simulated OSA and the driver options that poll it."""

    sim: OsaSimulator
    thread: ServerThread

    def document(self, **overrides: Any) -> dict[str, Any]:
        visa = {"resource": self.sim.resource, "timeout": 1, **overrides.pop("visa", {})}
        return {
            "dialect": self.sim.dialect,
            "visa": visa,
            "link": self.sim.link,
            "sensitivity": "high2",
            "quantum_channels": list(self.sim.spectrum.notch_channels),
            **overrides,
        }

    def options(self, **overrides: Any) -> OsaOptions:
        return OsaOptions.model_validate(self.document(**overrides))

    def device(self, name: str, **overrides: Any) -> dict[str, Any]:
        collector = {k: overrides.pop(k) for k in ("interval", "timeout") if k in overrides}
        return {"name": name, "driver": "osa", **collector, **self.document(**overrides)}


@pytest.fixture
def scpi_sim() -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(server: ScpiServer, *, pty: bool = False, vxi11: bool = False) -> ServerThread:
        thread = ServerThread([server], pty=pty, vxi11=vxi11).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


@pytest.fixture
def osa_sim(scpi_sim: Callable[..., ServerThread]) -> Callable[..., OsaBench]:
    def start(
        dialect: str = "yokogawa",
        link: str = "4",
        *,
        sweep_time_s: float = 0.02,
        seed: int = 0,
        pty: bool = False,
        vxi11: bool = False,
    ) -> OsaBench:
        sim = OsaSimulator(dialect, link, sweep_time_s=sweep_time_s, seed=seed)  # type: ignore[arg-type]
        return OsaBench(sim, scpi_sim(sim, pty=pty, vxi11=vxi11))

    return start

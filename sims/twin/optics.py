"""The twin's optical instruments: OSAs, OTDRs and power meters that read the one model live.

Why: a fault injected in the twin (a 3 dB bend 12 km down link 4) has to show in every
instrument that sees that fibre at once, as it would on the real network. Each simulator keeps
its fixed view of its link (the topology's spectrum, the invented fibre layout, the link's
loss) and asks the model what has changed at every measurement, through its `live` hook:

- an OSA sweep shows the link's spectrum with `model.extra_loss_db(link)` more loss: every
  carrier drops by it, and so does the transmitters' broadband noise that travels with them
  (on these unamplified links the OSNR stays; the notch depth and channel powers move);
- an OTDR acquisition tests the fibre with `model.fibre_faults(link)` as events at their
  distance from the OTDR (a break ends the fibre there), so the trace, the event table and
  the total loss show them; measured by the OTDR's own event detection, not copied;
- a power meter reads the 0 dBm source `model.link_loss_db(link, band)` down (C or O band by
  the head's wavelength; the model's temperature swing included).

Which instruments: the topology's `instruments:` (kind, link, the site it stands at). OSAs and
OTDRs listen on free TCP ports of `host` (raw SCPI socket), each power meter on a pty behind
`workdir/<name>.tty`. `OpticalSims.devices()` are the collector entries polling them, in the
shapes of the drivers' sample.yaml; OTDR baselines go to `workdir/otdr-baselines`, so a fault
after the first acquisition raises `otdr_alarm` points.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdtel.sims.osa.cli import device_entry as osa_entry
from qkdtel.sims.osa.server import OsaSimulator
from qkdtel.sims.osa.spectrum import LinkSpectrum
from qkdtel.sims.otdr.cli import device_entry as otdr_entry
from qkdtel.sims.otdr.fibre import FibreRoute, route_for_link
from qkdtel.sims.otdr.instrument import OtdrSim
from qkdtel.sims.scpi import ScpiServer, ServerThread
from qkdtel.sims.serial_meter import CHANNEL, SLOT, PowerMeterSim, SerialLine
from qkdtel.sims.topology import Instrument, Link, Topology
from qkdtel.sims.twin.model import FibreFault, TwinModel

OSA_SWEEP_S = 0.2
"""Real seconds per sweep: short, so a poll hardly waits (a real one takes 0.2 s to a minute,
with the sensitivity)."""
OTDR_SPEED = 10.0
"""Acquisitions this many times faster than real: the default 30 s of averaging in 3 s."""
OTDR_INTERVAL = "5m"
"""Twin OTDRs acquire every 5 minutes (a production network's, every few hours), so an
injected fault shows soon."""
O_BAND_BELOW_NM = 1400.0
BAD_CONNECTOR_DB = -35.0
"""Reflectance of a `connector` fault: a dirty or damaged one (a good one is below -45 dB)."""
EDGE_M = 1.0
"""A fault the model puts at a fibre's very end is shown this far inside it."""

Simulator = OsaSimulator | OtdrSim | PowerMeterSim


@dataclass
class OpticalSims:
    """The running optical instruments of the twin; `stop()` ends them all."""

    thread: ServerThread
    lines: list[SerialLine]
    entries: list[dict[str, Any]]
    servers: dict[str, Simulator] = field(default_factory=dict)
    """Instrument name -> its simulator (ground truth for tests: routes, spectra)."""

    def devices(self) -> list[dict[str, Any]]:
        """Collector `devices:` entries polling every instrument (copies: safe to edit)."""
        return copy.deepcopy(self.entries)

    def stop(self) -> None:
        """Stop serving: TCP listeners closed, ptys closed and their paths removed."""
        for line in self.lines:
            line.stop()
        self.thread.stop()


def live_spectrum(model: TwinModel, link: str) -> Callable[[LinkSpectrum], LinkSpectrum]:
    """The OSA's hook: its link's spectrum with the model's extra loss on the link now."""
    return lambda spectrum: spectrum.with_extra_loss(model.extra_loss_db(link))


def live_route(model: TwinModel, link: Link, site: str) -> Callable[[FibreRoute], FibreRoute]:
    """The OTDR's hook: its fibre with the model's faults on the link now, placed as seen
    from `site` (the model counts a fault's distance from the link's end `a`)."""

    def route(base: FibreRoute) -> FibreRoute:
        placed = []
        for fault in model.fibre_faults(link.id):
            from_a = fault.distance_km * 1000.0
            distance = from_a if site == link.a else base.length_m - from_a
            # the model allows a fault at either end; the fibre's events lie strictly between
            placed.append((min(max(distance, EDGE_M), base.length_m - EDGE_M), fault))
        for distance, fault in sorted(placed, key=lambda item: item[0]):
            if fault.kind == "break":
                return base.with_break(distance)  # nothing beyond it is seen any more
            base = with_fault(base, fault, distance)
        return base

    return route


def with_fault(route: FibreRoute, fault: FibreFault, distance_m: float) -> FibreRoute:
    """`route` with a loss `fault` (not a break) at `distance_m` from the OTDR."""
    if fault.kind == "connector":
        return route.with_reflection(distance_m, BAD_CONNECTOR_DB, fault.loss_db, "connector")
    return route.with_added_loss(distance_m, fault.loss_db, fault.kind)


def live_loss(model: TwinModel, link: str) -> Callable[[float], float]:
    """The power meter's hook: the link's loss now at the head's wavelength (nm)."""
    return lambda nm: model.link_loss_db(link, "O" if nm < O_BAND_BELOW_NM else "C")


def _tags(topology: Topology, instrument: Instrument) -> dict[str, str]:
    return {"node": instrument.site, "domain": topology.site(instrument.site).domain}


def _simulator(model: TwinModel, instrument: Instrument, host: str) -> Simulator:
    """The simulator of one instrument of the topology, wired to `model`."""
    link = model.topology.link(instrument.link)
    if instrument.kind == "osa":
        return OsaSimulator(
            "yokogawa",
            link.id,
            topology=model.topology,
            seed=model.seed,
            sweep_time_s=OSA_SWEEP_S,
            live=live_spectrum(model, link.id),
            host=host,
        )
    if instrument.kind == "otdr":
        route = route_for_link(link, seed=model.seed)
        if instrument.site != link.a:
            route = route.from_far_end()
        live = live_route(model, link, instrument.site)
        return OtdrSim(route, speed=OTDR_SPEED, seed=model.seed, live=live, host=host)
    return PowerMeterSim(seed=model.seed, live_loss=live_loss(model, link.id))


def follow_devices(model: TwinModel, servers: Mapping[str, ScpiServer]) -> None:
    """An instrument the model has down stops answering (stalls), and answers again when up:
    now, and after every change of the model's devices."""

    def apply(what: str = "devices") -> None:
        if what == "devices":
            for name, server in servers.items():
                server.faults.stall = not model.device_up(name)

    apply()
    model.subscribe(apply)


def start_optical_sims(model: TwinModel, *, workdir: Path, host: str = "127.0.0.1") -> OpticalSims:
    """Start the topology's optical instruments in this process, reading `model` live.

    They serve from background threads until `stop()`; a start that fails half-way stops
    what it had started before raising.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    instruments = model.topology.instruments
    sims = {i.name: _simulator(model, i, host) for i in instruments}
    meters = {n: s for n, s in sims.items() if isinstance(s, PowerMeterSim)}
    thread = ServerThread([s for s in sims.values() if not isinstance(s, PowerMeterSim)]).start()
    lines: dict[str, SerialLine] = {}
    try:
        for name, meter in meters.items():
            lines[name] = SerialLine(meter, workdir / f"{name}.tty").start()
    except BaseException:
        OpticalSims(thread, list(lines.values()), []).stop()
        raise
    follow_devices(model, sims)
    entries = [
        _entry(model.topology, i, sims[i.name], lines.get(i.name), workdir) for i in instruments
    ]
    return OpticalSims(thread, list(lines.values()), entries, sims)


def _entry(
    topology: Topology,
    instrument: Instrument,
    sim: Simulator,
    line: SerialLine | None,
    workdir: Path,
) -> dict[str, Any]:
    """The instrument's collector device entry, named and tagged as in the topology: the
    `qkdtel sims osa|otdr` one (OTDRs: the twin's interval and a baseline directory), or a
    power meter's with one C-band head (drivers/powermeter/sample.yaml)."""
    named = {"name": instrument.name, "tags": _tags(topology, instrument)}
    if isinstance(sim, OsaSimulator):
        return {**osa_entry(sim), **named}
    if isinstance(sim, OtdrSim):
        baselines = str(workdir / "otdr-baselines")
        return {**otdr_entry(sim), **named, "interval": OTDR_INTERVAL, "baseline_dir": baselines}
    assert line is not None  # every power meter has its line
    head = {"slot": SLOT, "channel": CHANNEL, "wavelength_nm": 1550, "link": instrument.link}
    return {
        "name": instrument.name,
        "driver": "powermeter",
        "interval": "10s",
        "timeout": "5s",
        "tags": named["tags"],
        "visa": {"resource": line.resource},
        "heads": [head],
    }

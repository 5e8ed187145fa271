"""The simulated QKD modules a benchmark polls, served by `qkdtel sims up` child processes.

Agents run in processes of their own so that their CPU counts against neither poller; the
modules are those of the MadQCI twin (28), with copies of it beyond.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common.procs import process_cpu
from qkdtel.sims import collector_config
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.snmp.agent import Credentials
from qkdtel.sims.snmp.network import AgentInfo
from qkdtel.sims.topology import load_topology

# Driver defaults (drivers/qkd_snmp/options.py), given to every poller compared with it.
REQUEST_TIMEOUT_S = 1
RETRIES = 1
MAX_REPETITIONS = 25


@dataclass(frozen=True)
class Slot:
    """One polled module: a simulated module of the twin, in copy `copy` of it."""

    module: str
    profile: str
    copy: int

    @property
    def device(self) -> str:
        return self.module if self.copy == 0 else f"{self.module}-c{self.copy}"


def choose_slots(count: int) -> list[Slot]:
    """`count` modules of the MadQCI twin, the four families interleaved; copies beyond 28."""
    topology = load_topology()
    by_profile: dict[str, list[str]] = defaultdict(list)
    for module in topology.modules:
        by_profile[module.profile].append(module.name)
    order: list[tuple[str, str]] = []
    queues = [list(names) for names in by_profile.values()]
    profile_of = {m.name: m.profile for m in topology.modules}
    while any(queues):
        for queue in queues:
            if queue:
                name = queue.pop(0)
                order.append((name, profile_of[name]))
    return [Slot(*order[i % len(order)], copy=i // len(order)) for i in range(count)]


def split_slots(slots: Sequence[Slot], processes: int) -> list[list[Slot]]:
    """Spread the slots over agent processes; one process never hosts a module twice."""
    groups: list[list[Slot]] = [[] for _ in range(max(1, processes))]
    for slot in slots:
        fits = [g for g in groups if all(s.module != slot.module for s in g)]
        if not fits:
            fits = [[]]
            groups.append(fits[0])
        min(fits, key=len).append(slot)
    return [g for g in groups if g]


class Agents:
    """The simulated modules, served by `sims up` child processes."""

    def __init__(self, slots: Sequence[Slot], processes: int, work: Path):
        self.slots = list(slots)
        self.groups = split_slots(slots, processes)
        self.work = work
        self.sims: list[SimsProcess] = []
        self.entries: dict[str, dict[str, Any]] = {}  # device name -> v2c devices: entry

    def __enter__(self) -> Agents:
        try:
            for n, group in enumerate(self.groups):
                args = [arg for slot in group for arg in ("--only", slot.module)]
                sims = SimsProcess(self.work / f"sims-{n}.yaml", args).start()
                self.sims.append(sims)
                for slot in group:
                    entry = dict(sims.devices[slot.module], name=slot.device)
                    self.entries[slot.device] = entry
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for sims in self.sims:
            sims.stop()

    def cpu(self) -> list[float]:
        """CPU seconds of each agent process so far."""
        return [process_cpu(s.pid) for s in self.sims]

    def address(self, device: str) -> str:
        """`host:port` of a device's agent."""
        return self.entries[device]["address"]

    def device_entries(self, version: str) -> list[dict[str, Any]]:
        """The collector's `devices:` entries for every slot, in SNMP `version`."""
        out = []
        for slot in self.slots:
            entry = self.entries[slot.device]
            if version == "3":
                host, _, port = entry["address"].rpartition(":")
                info = AgentInfo(
                    name=slot.device,
                    host=host,
                    port=int(port),
                    profile=slot.profile,
                    site=entry["tags"]["node"],
                    domain=entry["tags"]["domain"],
                    credentials=Credentials(community=entry["snmp"]["community"]),
                )
                entry = collector_config.device_entry(info, v3=True)
            snmp = dict(
                entry["snmp"],
                request_timeout=REQUEST_TIMEOUT_S,
                retries=RETRIES,
                max_repetitions=MAX_REPETITIONS,
            )
            out.append(dict(entry, snmp=snmp, timeout=30))
        return out

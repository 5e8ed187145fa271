"""What a configuration reload (SIGHUP) changes: devices added, removed, changed, kept.

Like Telegraf's reload, but finer: only the devices whose entries changed are stopped and
started; the others keep polling (their back-off and schedule intact), and the spool and the
sinks are never touched, so nothing waiting for delivery is disturbed. The collector's settings,
sinks and listeners are read at start only: a reload that changes them says so in the log and
they take effect at the next restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkdtel.config import Device, LoadedConfig


@dataclass(frozen=True)
class ReloadPlan:
    """The difference between the running configuration and a new, valid one."""

    added: list[Device]
    removed: list[str]
    changed: list[Device]
    """Devices whose entry differs (driver options included): stopped, then started anew."""
    kept: list[str]
    needs_restart: list[str]
    """Sections that differ but are applied only at start (`collector`, `sinks`, `listeners`)."""

    def summary(self) -> str:
        """`added c; removed b; changed a; 2 unchanged` (the parts that apply)."""
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", [d.config.name for d in self.added]),
                ("removed", self.removed),
                ("changed", [d.config.name for d in self.changed]),
            )
            if names
        ]
        return "; ".join([*parts, f"{len(self.kept)} unchanged"])


def plan_reload(running: LoadedConfig, new: LoadedConfig) -> ReloadPlan:
    """How to go from the `running` configuration to `new` (both validated)."""
    old = {d.config.name: d for d in running.devices}
    fresh = {d.config.name: d for d in new.devices}
    restart = [
        section
        for section, before, after in (
            ("collector", running.config.collector, new.config.collector),
            ("sinks", running.config.effective_sinks(), new.config.effective_sinks()),
            ("listeners", running.listeners, new.listeners),
        )
        if before != after
    ]
    return ReloadPlan(
        added=[d for name, d in fresh.items() if name not in old],
        removed=[name for name in old if name not in fresh],
        changed=[d for name, d in fresh.items() if name in old and old[name] != d],
        kept=[name for name, d in fresh.items() if old.get(name) == d],
        needs_restart=restart,
    )

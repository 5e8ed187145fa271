"""Optical switch driver: the cross-connect map, per-port power and state, over NETCONF.

Why it is built like this: ncclient is blocking, so this is a `BlockingDriver`; the NETCONF
session is opened at the first poll and kept (`NetconfSession`), re-opened after a drop with
back-off. One `get` with a subtree filter per poll reads configuration and state together, so
the map and the powers are of one instant. The map of the previous poll is kept, and a
difference becomes `optical_switch_event` points naming the ports (a change between polls is
also pushed at once by the `netconf_notifications` listener).
"""

from __future__ import annotations

from typing import ClassVar

from qkdtel.drivers.netconf import NetconfSession
from qkdtel.drivers.netconf_switch.events import change_events, map_changes
from qkdtel.drivers.netconf_switch.model import SwitchState, parse_switch, subtree_filter
from qkdtel.drivers.netconf_switch.options import SwitchOptions
from qkdtel.sdk import BlockingDriver, FieldValue, Sample, now_ns

RPC_SHARE = 0.8
"""Share of the device's timeout an RPC may take, so the driver reports the timeout itself
(and drops the session) before the collector abandons its thread."""


class NetconfSwitchDriver(BlockingDriver[SwitchOptions]):
    """One fibre cross-connect switch (qkdtel-optical-switch YANG) over NETCONF."""

    description: ClassVar[str] = "optical fibre switch over NETCONF: cross-connects, port power"

    def __init__(self, name: str, options: SwitchOptions, timeout: float):
        super().__init__(name, options, timeout)
        self.session = NetconfSession(name, options, timeout * RPC_SHARE)
        self._last_pairs: dict[int, int] | None = None

    def poll_blocking(self) -> list[Sample]:
        reply = self.session.call("get", lambda m: m.get(filter=subtree_filter()))
        state = parse_switch(reply.data_ele, self.session.where)
        at = now_ns()
        samples = [self._switch_sample(state, at)]
        samples += [self._port_sample(state, port_id, at) for port_id in sorted(state.ports)]
        if self._last_pairs is not None:
            samples += change_events(map_changes(self._last_pairs, state.pairs), "poll", at)
        self._last_pairs = dict(state.pairs)
        return samples

    @staticmethod
    def _switch_sample(state: SwitchState, at: int) -> Sample:
        fields: dict[str, FieldValue] = {
            "cross_connects": len(state.pairs),
            "ports": len(state.ports),
            "cross_connect_map": ",".join(f"{i}>{e}" for i, e in sorted(state.pairs.items())),
        }
        opers = [p.oper_state for p in state.ports.values() if p.oper_state is not None]
        if opers:
            fields["ports_up"] = sum(o == "up" for o in opers)
        for leaf, value in state.inventory.items():
            fields[leaf.replace("-", "_")] = value
        return Sample("optical_switch", {}, fields, at)

    @staticmethod
    def _port_sample(state: SwitchState, port_id: int, at: int) -> Sample:
        port = state.ports[port_id]
        tags = {"port": str(port_id)}
        if port.direction:
            tags["direction"] = port.direction
        if port.label:
            tags["label"] = port.label
        peer = state.pairs.get(port_id) or next(
            (i for i, e in state.pairs.items() if e == port_id), 0
        )
        fields: dict[str, FieldValue] = {"admin_enabled": port.admin_enabled, "peer_port": peer}
        if port.oper_state is not None:
            fields["oper_up"] = port.oper_state == "up"
        if port.power_dbm is not None:
            fields["power_dbm"] = port.power_dbm
        return Sample("optical_switch_port", tags, fields, at)

    def close_blocking(self) -> None:
        self.session.close()

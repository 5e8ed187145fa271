"""Fibre cross-connect switches over NETCONF (qkdtel-optical-switch.yang): telemetry driver,
safe cross-connect control (`SwitchControl`, `qkdtel switch`) and the notification listener."""

from qkdtel.drivers.netconf_switch.driver import NetconfSwitchDriver

__all__ = ["NetconfSwitchDriver"]

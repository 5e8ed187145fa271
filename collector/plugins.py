"""Plugin discovery: drivers (`qkdtel.drivers`) and listeners (`qkdtel.listeners`) are found
through entry points.

Any installed distribution can add one by declaring, in its own pyproject.toml:

    [project.entry-points."qkdtel.drivers"]
    my_device = "my_package.module:MyDriver"

    [project.entry-points."qkdtel.listeners"]
    my_notifications = "my_package.listener:MyListener"

so third parties never need to touch this repository, and the collector never imports a
plugin's package by name (the layering: sdk -> drivers -> collector).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from qkdtel.sdk import Driver, Listener

GROUP = "qkdtel.drivers"
LISTENER_GROUP = "qkdtel.listeners"


class PluginNotFound(LookupError):
    """No installed plugin has that name, or it failed to load."""


class DriverNotFound(PluginNotFound):
    """No installed driver has that name, or it failed to load."""


class ListenerNotFound(PluginNotFound):
    """No installed listener has that name, or it failed to load."""


def driver_entry_points() -> dict[str, EntryPoint]:
    """Installed drivers by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def listener_entry_points() -> dict[str, EntryPoint]:
    """Installed listeners by name."""
    return {ep.name: ep for ep in entry_points(group=LISTENER_GROUP)}


def _load(eps: dict[str, EntryPoint], name: str, base: type, error: type[PluginNotFound]) -> type:
    """The class registered under `name`, checked to derive from `base`."""
    kind = "driver" if base is Driver else "listener"
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise error(f"no {kind} named {name!r} is installed (installed: {known})")
    try:
        cls = eps[name].load()
    except Exception as exc:  # a broken plugin must not hide the others
        raise error(f"{kind} {name!r} failed to load: {exc!r}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise error(f"{kind} {name!r} ({eps[name].value}) is not a qkdtel {base.__name__}")
    return cls


@cache
def load_driver(name: str) -> type[Driver]:
    """The driver class registered under `name`."""
    return _load(driver_entry_points(), name, Driver, DriverNotFound)


@cache
def load_listener(name: str) -> type[Listener]:
    """The listener class registered under `name`."""
    return _load(listener_entry_points(), name, Listener, ListenerNotFound)

"""Driver discovery through the `qkdtel.drivers` entry-point group.

Any installed distribution can add a driver by declaring, in its own pyproject.toml:

    [project.entry-points."qkdtel.drivers"]
    my_device = "my_package.module:MyDriver"

so third parties never need to touch this repository.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from qkdtel.sdk import Driver

GROUP = "qkdtel.drivers"


class DriverNotFound(LookupError):
    """No installed driver has that name, or it failed to load."""


def driver_entry_points() -> dict[str, EntryPoint]:
    """Installed drivers by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@cache
def load_driver(name: str) -> type[Driver]:
    """The driver class registered under `name`."""
    eps = driver_entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise DriverNotFound(f"no driver named {name!r} is installed (installed: {known})")
    try:
        cls = eps[name].load()
    except Exception as exc:  # a broken plugin must not hide the others
        raise DriverNotFound(f"driver {name!r} failed to load: {exc!r}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverNotFound(f"driver {name!r} ({eps[name].value}) is not a qkdtel Driver")
    return cls

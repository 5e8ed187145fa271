"""Hooks on asyncio's UDP transport of this process: every SNMP request the driver sends leaves
through it and every answer arrives through it, whatever the client builds them with."""

from __future__ import annotations

import contextlib
from asyncio import selector_events
from collections.abc import Iterator
from typing import Any

# Private, but stable across CPython 3.11-3.13.
UDP_TRANSPORT = selector_events._SelectorDatagramTransport


@contextlib.contextmanager
def counting_datagrams() -> Iterator[list[int]]:
    """Count the UDP datagrams this process sends (the SNMP requests, during qkdtel rounds)."""
    counter = [0]
    original = UDP_TRANSPORT.sendto

    def counted(self: Any, data: Any, addr: Any = None) -> None:
        counter[0] += 1
        original(self, data, addr)

    UDP_TRANSPORT.sendto = counted  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        UDP_TRANSPORT.sendto = original  # type: ignore[method-assign]

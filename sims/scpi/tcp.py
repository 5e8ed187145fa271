"""TCP settings the simulated instruments give every connection they accept."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def like_an_instrument(writer: asyncio.StreamWriter) -> None:
    """Answer at once and send with CUBIC, as an instrument's network stack does.

    No Nagle delay: instruments answer a query in one go. CUBIC: a host whose default is BBR
    (as on the machines this was measured on) would otherwise run its simulators with BBR,
    which after a few hundred short exchanges on a connection (a sweep's set-up, error-queue
    reads) keeps that connection's window small: every later 400 kB trace took twice as long on
    it as on a fresh connection. No instrument's stack does that; with CUBIC, the history of a
    connection makes no difference (bench/README.md, scpi_transfer.py).
    """
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(OSError, AttributeError):  # Linux only; CUBIC may not be loaded
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")

"""NETCONF message framing over an SSH channel (RFC 6242 section 4).

Hellos are end-of-message framed (`]]>]]>`); after them, chunked framing if both peers
advertised base:1.1. paramiko gives a byte stream; this splits it into messages.
"""

from __future__ import annotations

import re

import paramiko

EOM = b"]]>]]>"
MAX_MESSAGE = 16 * 1024 * 1024
"""A client sending more than this in one message is cut off (a simulator bound, not RFC)."""
_CHUNK = re.compile(rb"\n#(\d{1,10})\n")


class FramingError(Exception):
    """The peer broke the framing rules; the session must end."""


class Framer:
    """Reads and writes whole NETCONF messages on one SSH channel."""

    def __init__(self, channel: paramiko.Channel):
        self.channel = channel
        self.chunked = False
        self._buffer = b""

    def _fill(self) -> None:
        data = self.channel.recv(65536)
        if not data:
            raise EOFError("the client closed the channel")
        self._buffer += data
        if len(self._buffer) > MAX_MESSAGE:
            raise FramingError("message too long")

    def read(self) -> bytes:
        """The next whole message (EOFError when the client has gone)."""
        return self._read_chunked() if self.chunked else self._read_eom()

    def _read_eom(self) -> bytes:
        while EOM not in self._buffer:
            self._fill()
        message, _, self._buffer = self._buffer.partition(EOM)
        return message

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            while len(self._buffer) < 4:
                self._fill()
            if self._buffer.startswith(b"\n##\n"):
                self._buffer = self._buffer[4:]
                return b"".join(parts)
            match = _CHUNK.match(self._buffer)
            if match is None:
                if b"\n" in self._buffer[1:] and len(self._buffer) > 13:
                    raise FramingError("bad chunk header")
                self._fill()
                continue
            size, start = int(match.group(1)), match.end()
            while len(self._buffer) < start + size:
                self._fill()
            parts.append(self._buffer[start : start + size])
            self._buffer = self._buffer[start + size :]

    def write(self, message: bytes) -> None:
        """Send one message in the framing in force."""
        if self.chunked:
            self.channel.sendall(b"\n#%d\n" % len(message) + message + b"\n##\n")
        else:
            self.channel.sendall(message + EOM)

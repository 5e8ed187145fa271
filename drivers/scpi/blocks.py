"""IEEE 488.2 definite-length arbitrary blocks (`#<n><length><payload>`) and ASCII value lists.

Shared by the client (`ScpiInstrument.query_block`) and the simulators (`sims/scpi`), so both
ends agree on one reading of the standard:

- `#` then one digit n (1-9) then n decimal digits giving the payload length in bytes, then the
  payload, then the message terminator. `#0` (indefinite length: the payload runs to the end of
  the message) is not accepted here: over a raw socket there is no END signal to tell a
  terminator byte inside binary data from the real end of the message.
- The payload of a trace is an array of IEEE 754 numbers; byte order and width depend on the
  instrument (`dtype` below, e.g. `<f8` little-endian float64).

Every malformed input raises `Malformed` naming what was expected and what came, so an
operator reading `qkdtel_device_status.error` knows whether the instrument, the cable or the
profile is wrong.
"""

from __future__ import annotations

import re

import numpy as np

from qkdtel.sdk import Malformed


def encode_block(payload: bytes) -> bytes:
    """`payload` as a definite-length block (without the message terminator)."""
    length = str(len(payload)).encode("ascii")
    if len(length) > 9:
        raise ValueError(f"a block holds at most 999999999 bytes, not {len(payload)}")
    return b"#" + str(len(length)).encode("ascii") + length + payload


def header_digits(prefix: bytes, where: str) -> int:
    """How many length digits follow `#n`; `prefix` is the first two bytes of the answer."""
    if len(prefix) < 2 or prefix[:1] != b"#":
        raise Malformed(f"{where}: expected a binary block (#<n><length>...), got {prefix!r}")
    digit = prefix[1:2]
    if digit == b"0":
        raise Malformed(f"{where}: indefinite-length block (#0) is not supported")
    if not digit.isdigit():
        raise Malformed(f"{where}: block header {prefix!r} has no digit count after '#'")
    return int(digit)


def payload_length(digits: bytes, where: str) -> int:
    """The payload length from the header's length digits."""
    if not digits.isdigit():
        raise Malformed(f"{where}: block length {digits!r} is not a decimal number")
    return int(digits)


def truncated_block(where: str, length: int, got: int) -> Malformed:
    """The error for a block whose message ended after `got` of its declared `length` bytes."""
    return Malformed(
        f"{where}: truncated block: header declares {length} bytes, the message ended after {got}"
    )


def decode_block(raw: bytes, where: str) -> bytes:
    """The payload of a complete block held in memory (`#<n><length><payload>[terminator]`).

    Trailing bytes beyond the declared length may only be a terminator (CR and/or LF).
    """
    n = header_digits(raw[:2], where)
    length = payload_length(raw[2 : 2 + n], where)
    start = 2 + n
    payload = raw[start : start + length]
    if len(payload) < length:
        raise Malformed(
            f"{where}: truncated block: header declares {length} bytes, got {len(payload)}"
        )
    rest = raw[start + length :]
    if rest.strip(b"\r\n"):
        raise Malformed(f"{where}: {len(rest)} unexpected bytes after the block")
    return payload


def block_values(
    payload: bytes | memoryview,
    dtype: str,
    where: str,
    expected: int | None = None,
    *,
    finite: bool = True,
) -> np.ndarray:
    """The payload as a float64 array of numbers of type `dtype` (numpy notation, e.g. `<f4`).

    Checks, each done once on the whole block: a whole number of values, `expected` values,
    and with `finite` (the default) no NaN or infinity.
    """
    kind = np.dtype(dtype)
    if len(payload) % kind.itemsize:
        raise Malformed(
            f"{where}: block of {len(payload)} bytes is not a whole number of "
            f"{kind.itemsize}-byte values"
        )
    values = np.frombuffer(payload, dtype=kind)
    # a fresh buffer of the reader's own (`Job.query_block`) is used as is when already float64
    values = values.astype(np.float64, copy=not values.flags.writeable)
    return _checked(values, where, expected, finite)


_SEPARATORS = re.compile(r"[,\s]+")


def ascii_values(text: str, where: str, expected: int | None = None) -> np.ndarray:
    """Numbers separated by commas and/or whitespace (CR LF included) as a float64 array."""
    items = [item for item in _SEPARATORS.split(text.strip()) if item]
    try:
        values = np.array([float(item) for item in items], dtype=np.float64)
    except ValueError as exc:
        bad = next(item for item in items if not _is_number(item))
        raise Malformed(f"{where}: {bad[:40]!r} is not a number") from exc
    return _checked(values, where, expected)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _checked(
    values: np.ndarray, where: str, expected: int | None, finite: bool = True
) -> np.ndarray:
    if expected is not None and len(values) != expected:
        raise Malformed(f"{where}: expected {expected} values, got {len(values)}")
    # A finite einsum sum was tried to save ~5 us a block (bench/scpi_transfer.py): traces
    # arrive a few times a minute, so the plain check it is.
    if finite and not np.isfinite(values).all():
        raise Malformed(f"{where}: values include NaN or infinity")
    return values

"""How much work the BER decoder does on one input, counted in lines of `ber.py` executed.

Counted, not timed: CPU clocks on a shared VM stretch (a 1-byte datagram once "took" 0.33 s of
thread time in CI), a count does not, and a quadratic path or a missing early refusal shows in
it all the same.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

from qkdtel.drivers.qkd_snmp import ber


def ber_lines(decode: Callable[[bytes], Any], data: bytes) -> int:
    """Lines of `ber.py` that `decode(data)` executes, with an empty OID cache (a cached OID
    would hide its cost); a BerError is the expected way out and is not counted against it."""
    count = 0

    def count_lines(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        count += event == "line"
        return count_lines

    def in_ber(frame: Any, event: str, arg: Any) -> Any:
        return count_lines if frame.f_code.co_filename == ber.__file__ else None

    ber.decode_oid.cache_clear()
    previous = sys.gettrace()
    sys.settrace(in_ber)
    try:
        with contextlib.suppress(ber.BerError):
            decode(data)
    finally:
        sys.settrace(previous)
    return count

"""Binary blocks read through pyvisa's public API (`visalib.read`, which reports END and
terminator bytes): VXI-11 and HiSLIP (the termination off, END marks the message's end), serial
lines, and SOCKET sessions whose socket this layer cannot reach (`socket_io` says when)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyvisa import constants
from pyvisa.errors import VisaIOError

from qkdtel.drivers.scpi.blocks import header_digits, payload_length, truncated_block
from qkdtel.drivers.scpi.transport import is_serial, visa_errors
from qkdtel.sdk import Malformed

if TYPE_CHECKING:
    from qkdtel.drivers.scpi.job import Job


def read_visa_block(job: Job, after: str) -> bytes:
    """Read a definite-length block and its terminator through pyvisa's reads; the payload.

    A message that ends (END, or a terminator followed by silence) before the declared length
    is a truncated block: Malformed, not a timeout. Silence in mid-payload that did not follow a
    terminator byte is a stalled instrument: DeviceTimeout. pyvisa-py reports a serial
    terminator byte as END, so on serial lines END is only a hint, like a terminator byte.
    """
    where = f"{job.where}: {after}"
    seconds = job.arm_timeout(f"the answer to {after!r}")
    with visa_errors(job.where, repr(after), seconds):
        head, _ = _read_chunk(job, 2)
    if len(head) < 2:
        head += _read_exact(job, 2 - len(head), after)
    digits = header_digits(head, where)
    length = payload_length(_read_exact(job, digits, after), where)
    payload = bytearray()
    serial = is_serial(job.where)
    ended = False  # the last chunk stopped at a terminator byte
    while len(payload) < length:
        seconds = job.arm_timeout(f"the rest of the block answering {after!r}")
        try:
            chunk, status = _read_chunk(
                job, min(job.instrument.settings.chunk_size, length - len(payload))
            )
        except VisaIOError as exc:
            if exc.error_code == constants.StatusCode.error_timeout and ended:
                raise _truncated(job, where, length, payload) from exc
            with visa_errors(job.where, repr(after), seconds):
                raise
        payload += chunk
        end = status == constants.StatusCode.success
        if end and not serial and len(payload) < length:
            raise _truncated(job, where, length, payload)  # END came before the data
        # pyvisa-py reports a serial terminator byte as END: only a hint, like a termchar
        ended = status == constants.StatusCode.success_termination_character_read or (
            end and serial
        )
    terminator = job.instrument.settings.read_termination.encode("ascii")
    if terminator:
        tail = _read_exact(job, len(terminator), after)
        if tail != terminator:
            raise Malformed(f"{where}: {tail!r} after the block instead of the terminator")
    return bytes(payload)


def _truncated(job: Job, where: str, length: int, payload: bytearray) -> Malformed:
    terminator = job.instrument.settings.read_termination.encode("ascii")
    got = len(payload) - (len(terminator) if terminator and payload.endswith(terminator) else 0)
    return truncated_block(where, length, got)


def _read_chunk(job: Job, count: int) -> tuple[bytes, Any]:
    """One low-level read: up to `count` bytes and the VISA status (END, terminator...)."""
    resource = job.resource
    with resource.ignore_warning(constants.StatusCode.success_max_count_read):
        return resource.visalib.read(resource.session, count)


def _read_exact(job: Job, count: int, after: str) -> bytes:
    data = bytearray()
    while len(data) < count:
        seconds = job.arm_timeout(f"the answer to {after!r}")
        with visa_errors(job.where, repr(after), seconds):
            chunk, _ = _read_chunk(job, count - len(data))
        data += chunk
    return bytes(data)

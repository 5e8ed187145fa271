"""VISA transport: pyvisa with the pure-Python pyvisa-py backend (no vendor VISA library).

Resources this layer is tested with (pyvisa-py serves them all):

- `TCPIP::<host>::<port>::SOCKET`: raw SCPI over TCP (Yokogawa: port 10001, many: 5025);
- `TCPIP::<host>::INSTR` / `TCPIP::<host>,<port>::INSTR`: VXI-11 (the port form skips the
  portmapper);
- `ASRL<device>::INSTR`: RS-232 through pyserial, e.g. `ASRL/dev/ttyUSB0::INSTR`; pyserial URLs
  work too (`ASRLsocket://host:port::INSTR` for a serial-to-Ethernet converter).

`VisaSettings` is the `visa:` section of a device in the configuration file, reused as is by
every SCPI driver; `visa_errors` turns pyvisa/pyserial/socket exceptions into the collector's
`PollError` classes, naming the resource and the command.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pyvisa
from pydantic import Field, ValidationInfo, field_validator
from pyvisa import constants, rname
from pyvisa.errors import VisaIOError

from qkdtel.sdk import (
    ConnectionLost,
    DeviceTimeout,
    Duration,
    Malformed,
    Model,
    PollError,
    Refused,
)

_SERIAL_KEYS = ("baud_rate", "data_bits", "parity", "stop_bits")
_PARITY = {
    "none": constants.Parity.none,
    "odd": constants.Parity.odd,
    "even": constants.Parity.even,
}
_STOP_BITS = {1: constants.StopBits.one, 2: constants.StopBits.two}


def canonical_resource(resource: str) -> str:
    """The canonical form of a VISA resource name (`TCPIP0::h::5025::SOCKET`), or ValueError.

    Two spellings of one instrument (`TCPIP::h::5025::SOCKET`, `TCPIP0::h::5025::SOCKET`)
    give the same string: the per-instrument lock is keyed by it.
    """
    try:
        parsed = rname.parse_resource_name(resource.strip())
    except (rname.InvalidResourceName, ValueError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from exc
    return str(parsed)


def is_serial(resource: str) -> bool:
    """Whether `resource` is an ASRL (serial) resource."""
    return resource.strip().upper().startswith("ASRL")


class VisaSettings(Model):
    """How to reach one instrument and talk to it (the `visa:` section of a device).

    `timeout` bounds every single read or write; a long operation (a sweep) has its own limit
    in the driver, and the device's `timeout` (collector setting) bounds the whole poll.
    """

    resource: str = Field(description="VISA resource name, e.g. TCPIP::10.0.0.5::10001::SOCKET")
    timeout: Duration = Field(5.0, description="limit of one read or write")
    open_timeout: Duration = Field(5.0, description="limit of opening the connection")
    read_termination: str = Field("\n", description="end of an answer")
    write_termination: str = Field("\n", description="appended to every command")
    chunk_size: int = Field(20 * 1024, ge=256, le=16 * 1024 * 1024, description="bytes per read")
    baud_rate: int | None = Field(None, ge=50, le=4_000_000, description="serial only")
    data_bits: Literal[7, 8] | None = Field(None, description="serial only")
    parity: Literal["none", "odd", "even"] | None = Field(None, description="serial only")
    stop_bits: Literal[1, 2] | None = Field(None, description="serial only")

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: str) -> str:
        canonical = canonical_resource(value)
        kind = canonical.rsplit("::", 1)[-1]
        if kind not in ("SOCKET", "INSTR"):
            raise ValueError(f"{canonical}: only ::SOCKET and ::INSTR resources are supported")
        return canonical

    @field_validator(*_SERIAL_KEYS)
    @classmethod
    def _serial_only(cls, value: Any, info: ValidationInfo) -> Any:
        resource = info.data.get("resource")
        if value is not None and resource and not is_serial(resource):
            raise ValueError(f"{info.field_name} applies to serial (ASRL) resources only")
        return value

    @field_validator("read_termination", "write_termination")
    @classmethod
    def _termination(cls, value: str) -> str:
        if value not in ("\n", "\r\n", "\r", ""):
            raise ValueError(r'use "\n", "\r\n", "\r" or "" (none)')
        return value


_manager: pyvisa.ResourceManager | None = None
_manager_lock = threading.Lock()


def resource_manager() -> pyvisa.ResourceManager:
    """The process's one pyvisa-py resource manager."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = pyvisa.ResourceManager("@py")
        return _manager


def open_resource(settings: VisaSettings) -> Any:
    """Open the instrument's connection with `settings` applied (Refused if it cannot)."""
    where = settings.resource
    with visa_errors(where, "opening the connection", settings.open_timeout):
        try:
            resource = resource_manager().open_resource(
                settings.resource, open_timeout=int(settings.open_timeout * 1000)
            )
        except (VisaIOError, OSError):
            raise
        except Exception as exc:  # pyvisa-py reports some failures as bare Exception
            raise Refused(f"{where}: cannot open: {exc}") from exc
    apply_settings(resource, settings)
    return resource


def apply_settings(resource: Any, settings: VisaSettings) -> None:
    """Terminations, timeout, chunk size and serial line settings onto an open resource
    (`socket_io.tune_socket` does the rest for a SOCKET session)."""
    resource.read_termination = settings.read_termination or None
    resource.write_termination = settings.write_termination
    resource.timeout = settings.timeout * 1000
    resource.chunk_size = settings.chunk_size
    if settings.baud_rate is not None:
        resource.baud_rate = settings.baud_rate
    if settings.data_bits is not None:
        resource.data_bits = settings.data_bits
    if settings.parity is not None:
        resource.parity = _PARITY[settings.parity]
    if settings.stop_bits is not None:
        resource.stop_bits = _STOP_BITS[settings.stop_bits]


_TIMEOUT_CODES = {constants.StatusCode.error_timeout}
_REFUSED_CODES = {
    constants.StatusCode.error_resource_not_found,
    constants.StatusCode.error_resource_busy,
}
_LOST_CODES = {constants.StatusCode.error_connection_lost, constants.StatusCode.error_io}


@contextmanager
def visa_errors(where: str, what: str, timeout: float | None = None) -> Iterator[None]:
    """Translate transport exceptions raised inside the block into `PollError`s.

    `what` says what was being done (`query ':TRACe:Y? TRA'`), `timeout` the limit it had.
    """
    try:
        yield
    except PollError:
        raise
    except VisaIOError as exc:
        if exc.error_code in _TIMEOUT_CODES:
            limit = f" within {round(timeout, 2):g} s" if timeout is not None else ""
            raise DeviceTimeout(f"{where}: no answer to {what}{limit}") from exc
        if exc.error_code in _REFUSED_CODES:
            raise Refused(f"{where}: {what}: {exc.description}") from exc
        if exc.error_code in _LOST_CODES:
            raise ConnectionLost(f"{where}: {what}: {exc.description}") from exc
        raise PollError(f"{where}: {what}: {exc.description}") from exc
    except TimeoutError as exc:  # a socket read by this layer itself (`socket_io`)
        limit = f" within {round(timeout, 2):g} s" if timeout is not None else ""
        raise DeviceTimeout(f"{where}: no answer to {what}{limit}") from exc
    except (ConnectionRefusedError, socket.gaierror) as exc:
        raise Refused(f"{where}: {what}: {exc.strerror or exc}") from exc
    except (ConnectionError, BrokenPipeError) as exc:
        raise ConnectionLost(f"{where}: {what}: connection lost ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise Malformed(f"{where}: {what}: the answer is not ASCII text") from exc
    except OSError as exc:
        # Unreachable hosts, missing serial devices (pyserial raises SerialException, an OSError)
        raise Refused(f"{where}: {what}: {exc.strerror or exc}") from exc

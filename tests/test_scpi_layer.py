"""The shared SCPI layer against a real simulated instrument: raw TCP socket, serial pty, VXI-11.

The test rig below is a `ScpiServer` with a handful of commands; the client side is a
`CommandTable` written independently. Covered: set/get/blocks/ASCII on both transports, the
error queue turned into `ScpiError`, timeouts naming the command, recovery (abort, clear) after a
stall, truncated blocks, the time budget, one job at a time per resource across instances,
connection failures, configuration validation.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

from qkdtel.drivers.scpi import (
    CommandTable,
    ScpiError,
    ScpiInstrument,
    VisaSettings,
    action,
    ascii_values,
    block_values,
    canonical_resource,
    control,
    decode_block,
    encode_block,
    ieee488_table,
    in_range,
    integer,
    measurement,
    setting,
)
from qkdtel.drivers.scpi.transport import resource_manager
from qkdtel.sdk import ConnectionLost, DeviceTimeout, Malformed, Refused
from qkdtel.sims.scpi import ScpiFailure, ScpiServer
from qkdtel.sims.scpi.server import header_pattern, normal_header
from tests.fixtures_scpi import free_tcp_port

TRACE = np.linspace(-70.0, -10.0, 5000).astype("<f4")


def _newline_trace(count: int) -> np.ndarray:
    """Finite float64 values whose bytes are about two thirds 0x0A (the LF terminator)."""
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=(count, 8), dtype=np.uint8)
    raw[rng.random((count, 8)) < 0.6] = 0x0A
    raw[:, 7] = 0x0A  # sign and exponent: a small positive normal number, never NaN/inf
    return raw.reshape(-1).view("<f8")


LF_TRACE = _newline_trace(2000)


class RigSim(ScpiServer):
    """A small instrument: a wavelength setting, a power reading, traces, a slow operation."""

    identity = "QKDTEL,BENCH,0001,1.0"

    def __init__(self) -> None:
        super().__init__()
        self.wavelength = 1550.0
        self.operation_s = 0.2  # how long ':INIT' runs
        self.operation: asyncio.Task | None = None
        self.add(":SOURce:WAVelength", write=self._set_wavelength, query=self._wavelength)
        self.add(":MEASure:POWer", query=lambda args: "-12.340")
        self.add(":TRACe[:DATA]", query=lambda args: self.block(TRACE.tobytes(), itemsize=4))
        self.add(":TRACe:NEWLines", query=lambda args: self.block(LF_TRACE.tobytes()))
        self.add(":TRACe:ASCii", query=lambda args: ",".join(f"{v:.3f}" for v in TRACE[:50]))
        self.add(":TRACe:LINes", query=lambda args: "\n".join(f"{v:.3f}" for v in TRACE[:20]))
        self.add(":INITiate", write=lambda args: self._start())
        self.add(":ABORt", write=lambda args: self._abort())
        self.add(":STATus:OPERation:CONDition", query=lambda args: str(int(self.running)))

    def _set_wavelength(self, args: list[str]) -> None:
        value = float(args[0])
        if not 1260 <= value <= 1650:
            raise ScpiFailure(-222, "Data out of range")
        self.wavelength = value

    def _wavelength(self, args: list[str]) -> str:
        return f"{self.wavelength:.3f}"

    @property
    def running(self) -> bool:
        return self.operation is not None and not self.operation.done()

    def _start(self) -> None:
        self.operation = asyncio.ensure_future(asyncio.sleep(self.operation_s))

    def _abort(self) -> None:
        if self.operation is not None:
            self.operation.cancel()

    def pending(self):
        if not self.running:
            return None
        return asyncio.wait([self.operation])


TABLE = ieee488_table(
    "rig",
    wavelength_nm=control(
        ":SOUR:WAV?", ":SOUR:WAV {value:.3f}", validate=in_range(1000, 1700, "nm")
    ),
    power_dbm=measurement(":MEAS:POW?", parse=float),
    trace=measurement(":TRAC?"),
    trace_ascii=measurement(":TRAC:ASC?"),
    trace_lf=measurement(":TRAC:NEWL?"),
    trace_lines=measurement(":TRAC:LIN?"),
    start=action(":INIT", slow=True),
    running=measurement(":STAT:OPER:COND?", parse=integer),
    abort=action(":ABOR", check=False),
    unknown=setting(":NOPE {value}"),
)


@pytest.fixture(params=["tcp", "serial", "vxi11"])
def rig(request, scpi_sim):
    """The test rig and an ScpiInstrument on it: raw socket, serial pty, VXI-11."""
    sim = RigSim()
    scpi_sim(sim, pty=request.param == "serial", vxi11=request.param == "vxi11")
    resource = {
        "tcp": lambda: sim.resource,
        "serial": lambda: sim.serial_resource,
        "vxi11": lambda: sim.instr_resource,
    }[request.param]()
    settings = VisaSettings(resource=resource, timeout=0.3)
    instrument = ScpiInstrument(settings, TABLE, recovery_timeout=1.0)
    yield sim, instrument
    instrument.close()


def texts(sim: ScpiServer) -> list[str]:
    return [r.text for r in sim.received()]


# -- blocks and values (pure) ----------------------------------------------------------------


def test_blocks_round_trip_and_every_malformed_header_is_named():
    payload = bytes(range(256)) * 5
    block = encode_block(payload)
    assert block.startswith(b"#41280")
    assert decode_block(block + b"\n", "osa") == payload
    for raw, why in [
        (b"12,34\n", "expected a binary block"),
        (b"#0abc\n", "indefinite-length block (#0) is not supported"),
        (b"#x12\n", "no digit count"),
        (b"#3a12xyz", "is not a decimal number"),
        (b"#210abc\n", "truncated block: header declares 10 bytes, got 4"),
        (b"#13abcjunk", "4 unexpected bytes after the block"),
    ]:
        with pytest.raises(Malformed, match="osa: .*" + re.escape(why)):
            decode_block(raw, "osa")


def test_block_values_check_count_and_finite_values_once():
    values = np.array([1.5, -2.0, 3.25])
    payload = memoryview(bytearray(values.astype(">f4").tobytes()))
    np.testing.assert_array_equal(block_values(payload, ">f4", "osa", expected=3), values)
    with pytest.raises(Malformed, match="osa: expected 4 values, got 3"):
        block_values(payload, ">f4", "osa", expected=4)
    with pytest.raises(Malformed, match="osa: block of 11 bytes is not a whole number of 4-byte"):
        block_values(payload[:11], ">f4", "osa")
    for bad in (np.nan, np.inf, -np.inf):
        raw = np.array([1.0, bad]).tobytes()
        with pytest.raises(Malformed, match="osa: values include NaN or infinity"):
            block_values(raw, "<f8", "osa", expected=2)
        np.testing.assert_array_equal(block_values(raw, "<f8", "osa", finite=False), [1.0, bad])
    # finite values whose sum overflows are still finite (the quick sum is only a shortcut)
    huge = np.array([1.7e308, 1.7e308, -3.0]).tobytes()
    np.testing.assert_array_equal(block_values(huge, "<f8", "osa"), [1.7e308, 1.7e308, -3.0])


def test_ascii_values_accept_commas_and_lines_and_name_the_bad_item():
    values = ascii_values("+1.5E+00, -2\r\n3.25\n", "dev: Q?", expected=3)
    assert values.tolist() == [1.5, -2.0, 3.25]
    with pytest.raises(Malformed, match=r"dev: Q\?: 'ERR' is not a number"):
        ascii_values("1,ERR,3", "dev: Q?")
    with pytest.raises(Malformed, match="expected 4 values, got 3"):
        ascii_values("1,2,3", "dev: Q?", expected=4)
    with pytest.raises(Malformed, match="NaN or infinity"):
        ascii_values("1,nan", "dev: Q?")


def test_simulator_headers_take_short_long_and_optional_forms():
    pattern = header_pattern("[:SENSe]:WAVelength:CENTer")
    for header in (":SENS:WAV:CENT", "sense:wavelength:center", "WAV:CENT", ":SENSe:WAVelength"):
        matched = bool(pattern.match(normal_header(header)))
        assert matched == (header != ":SENSe:WAVelength"), header
    assert not pattern.match(normal_header(":SENSE:WAV:CENTE"))  # neither short nor long
    sim = RigSim()
    answer = asyncio.run(sim.execute(1, ":sour:wav 1310;:SOURCE:WAVELENGTH?;:BOGUS 1;*IDN?"))
    assert answer == b"1310.000;QKDTEL,BENCH,0001,1.0\n"
    assert sim.errors() == [(-113, "Undefined header")]


# -- the instrument over both transports -----------------------------------------------------


def test_set_get_blocks_and_ascii_values(rig):
    sim, instrument = rig
    with instrument.job(5) as job:
        assert job.get("identify") == "QKDTEL,BENCH,0001,1.0"
        job.set("wavelength_nm", 1310)
        assert job.get("wavelength_nm") == 1310.0
        assert job.get("power_dbm") == -12.34
        trace = job.query_block("trace", "<f4", expected=len(TRACE))
        np.testing.assert_array_equal(trace, TRACE.astype(np.float64))
        np.testing.assert_allclose(job.query_values("trace_ascii"), TRACE[:50], atol=5e-4)
        lines = job.query_values("trace_lines", expected=20)  # one value per message
        np.testing.assert_allclose(lines, TRACE[:20], atol=5e-4)
    assert sim.wavelength == 1310.0
    sent = texts(sim)
    assert sent[0] == "*CLS"  # every job starts with a clean status
    assert sent[sent.index(":SOUR:WAV 1310.000") + 1] == ":SYSTem:ERRor?"


def test_instrument_errors_name_the_command_and_the_message(rig):
    sim, instrument = rig
    with pytest.raises(ScpiError) as caught, instrument.job(5) as job:
        job.set("wavelength_nm", 1100)  # allowed by the table, refused by the instrument
    error = caught.value
    assert error.kind == "instrument_error"
    assert error.command == ":SOUR:WAV 1100.000"
    assert error.errors == [(-222, "Data out of range")]
    assert str(error) == (
        f"{instrument.where}: ':SOUR:WAV 1100.000' failed: -222,\"Data out of range\""
    )
    assert sim.errors() == []  # the queue was read to its end
    assert not instrument.needs_recovery  # an error is an answer: the state is known

    sim.faults.errors[":SOURce:WAVelength"] = (-221, "Settings conflict")
    with (
        pytest.raises(ScpiError, match=r"':SOUR:WAV 1310.000' failed: -221,\"Settings"),
        instrument.job(5) as job,
    ):
        job.set("wavelength_nm", 1310)
    sim.faults.errors.clear()
    with (
        pytest.raises(ScpiError, match=r"':NOPE 1' failed: -113,\"Undefined header\""),
        instrument.job(5) as job,
    ):
        job.set("unknown", 1)
    with instrument.job(5) as job:
        job.set("wavelength_nm", 1310)
        assert job.get("wavelength_nm") == 1310.0


def test_bad_values_are_refused_before_anything_is_sent(rig):
    sim, instrument = rig
    with instrument.job(5) as job:
        with pytest.raises(ValueError, match=r"wavelength_nm: 1800 nm is outside 1000..1700 nm"):
            job.set("wavelength_nm", 1800)
        with pytest.raises(KeyError, match=r"rig has no command 'colour' \(it has: abort,"):
            job.get("colour")
    assert not any("1800" in t for t in texts(sim))


def test_a_stalled_instrument_times_out_then_is_aborted_and_cleared(rig):
    sim, instrument = rig
    sim.faults.stall = True
    started = time.monotonic()
    with (
        pytest.raises(DeviceTimeout, match=r"no answer to ':MEAS:POW\?' within 0.3 s"),
        instrument.job(5) as job,
    ):
        job.get("power_dbm")
    assert time.monotonic() - started < 3  # 0.3 s + one recovery attempt (1 s at most)
    assert instrument.needs_recovery  # the attempt right away found it still stalled

    sim.faults.stall = False
    sim.clear_log()
    with instrument.job(5) as job:
        assert job.get("power_dbm") == -12.34
    assert not instrument.needs_recovery
    sent = texts(sim)
    # recovery first, on a fresh connection (serial: the same line), before the next query
    assert sent[:3] == [":ABOR", "*CLS", "*OPC?"], sent
    assert sent[-1] == ":MEAS:POW?"


def test_long_operations_wait_on_opc_or_status_within_limits(rig):
    sim, instrument = rig
    with instrument.job(5) as job:
        started = time.monotonic()
        job.run("start")
        job.wait_complete(limit=2)
        assert time.monotonic() - started >= 0.19
        job.run("start")
        assert job.wait_until("running", lambda v: v == 0, limit=2, interval=0.02) == 0
    with (
        pytest.raises(DeviceTimeout, match=r"':INIT' did not complete within 0.05 s"),
        instrument.job(5) as job,
    ):
        job.run("start")
        job.wait_until("running", lambda v: v == 0, limit=0.05, interval=0.02)
    assert ":ABOR" in texts(sim)  # the unfinished operation was aborted by the recovery
    assert not instrument.needs_recovery


def test_the_job_budget_bounds_every_wait(rig):
    sim, instrument = rig
    sim.operation_s = 30  # outlasts the budget however long connecting took
    resource_manager()  # created once per process (imports pyvisa-py): not the budget's part
    started = time.monotonic()
    with (
        # what is left of the 0.5 s budget once connected, not the 30 s asked for
        pytest.raises(DeviceTimeout, match=r"no answer to ':INIT' \(\*OPC\?\) within 0\.\d+ s"),
        instrument.job(0.5) as job,
    ):
        job.run("start")
        job.wait_complete(limit=30)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("mode", ["cut", "short"])
def test_truncated_blocks_are_malformed(rig, mode):
    sim, instrument = rig
    sim.faults.truncate_blocks = mode
    why = (
        r"truncated block: header declares 20000 bytes, the message ended after 10000"
        if mode == "cut"
        else r"expected 5000 values, got 2500"
    )
    with pytest.raises(Malformed, match=r":TRAC\?: " + why), instrument.job(5) as job:
        job.query_block("trace", "<f4", expected=len(TRACE))
    sim.faults.truncate_blocks = None
    with instrument.job(5) as job:
        assert len(job.query_block("trace", "<f4", expected=len(TRACE))) == len(TRACE)


class CountingSocket:
    """The session's socket as the block reader sees it, counting its receives."""

    def __init__(self, sock):
        self.sock = sock
        self.receives = 0
        self.sent: list[bytes] = []

    def fileno(self):
        return self.sock.fileno()

    def send(self, data, flags=0):
        self.sent.append(bytes(data))
        return self.sock.send(data, flags)

    def recv_into(self, view, nbytes=0, flags=0):
        self.receives += 1
        return self.sock.recv_into(view, nbytes, flags)


def test_newline_bytes_inside_a_block_are_data_on_every_transport(rig):
    payload = LF_TRACE.tobytes()
    assert payload.count(b"\n") > len(payload) // 2
    _, instrument = rig
    with instrument.job(5) as job:
        trace = job.query_block("trace_lf", "<f8", expected=len(LF_TRACE))
        np.testing.assert_array_equal(trace, LF_TRACE)
        assert job.get("power_dbm") == -12.34  # the terminator was read, nothing more


def test_a_socket_block_full_of_newlines_arrives_in_few_receives(scpi_sim, monkeypatch):
    from qkdtel.drivers.scpi import socket_io as module

    sim = RigSim()
    scpi_sim(sim)
    instrument = ScpiInstrument(VisaSettings(resource=sim.resource, timeout=0.3), TABLE)
    counted: list[CountingSocket] = []

    socket_session = module.socket_session

    def counting(resource):
        sock, pending = socket_session(resource)
        counted.append(CountingSocket(sock))
        return counted[-1], pending

    monkeypatch.setattr(module, "socket_session", counting)

    with instrument.job(5) as job:
        trace = job.query_block("trace_lf", "<f8", expected=len(LF_TRACE))
        np.testing.assert_array_equal(trace, LF_TRACE)
        # 16,008 bytes, about 10,000 of them 0x0A: one receive per TCP segment, not per LF
        assert 1 <= counted[-1].receives <= 8, counted[-1].receives
        assert counted[-2].sent == [b":TRAC:NEWL?\n"]  # the query went out on the socket

        # bytes pyvisa-py read ahead (the block's start, behind an earlier answer) come first
        job.send("*IDN?")
        job.send(":TRAC:NEWL?")
        time.sleep(0.1)  # both answers are in the socket when the first one is read
        assert job.read_text("*IDN?") == "QKDTEL,BENCH,0001,1.0"
        _, pending = socket_session(job.resource)
        assert pending.startswith(b"#516000")
        trace = np.frombuffer(job.read_block(":TRAC:NEWL?"), "<f8")
        np.testing.assert_array_equal(trace, LF_TRACE)
        assert job.get("power_dbm") == -12.34

    # cut in the middle of the data: the terminator, then silence: a truncated block
    sim.faults.truncate_blocks = "cut"
    with (
        pytest.raises(
            Malformed, match=r"header declares 16000 bytes, the message ended after 8000"
        ),
        instrument.job(5) as job,
    ):
        job.query_block("trace_lf", "<f8", expected=len(LF_TRACE))
    instrument.close()


class FailingSocket:
    """A session's socket whose `send` fails with `error`: a mock, for connection errors a
    simulated instrument cannot be made to cause on demand."""

    def __init__(self, error: Exception):
        self.error = error

    def send(self, data, flags=0):
        raise self.error


@pytest.mark.parametrize(
    ("error", "raised", "message"),
    [
        (ConnectionResetError(104, "reset"), ConnectionLost, r"connection lost \(reset\)"),
        (BrokenPipeError(32, "broken"), ConnectionLost, r"connection lost \(broken\)"),
        (ConnectionRefusedError(111, "refused"), Refused, r"sending ':SOUR:WAV 1550.000': refused"),
    ],
)
def test_socket_send_errors_are_translated(scpi_sim, monkeypatch, error, raised, message):
    from qkdtel.drivers.scpi import socket_io as module

    sim = RigSim()
    scpi_sim(sim)
    instrument = ScpiInstrument(
        VisaSettings(resource=sim.resource, timeout=0.3), TABLE, recovery_timeout=1.0
    )
    with instrument.job(5) as job:
        _, pending = module.socket_session(job.resource)
        monkeypatch.setattr(
            module, "socket_session", lambda resource: (FailingSocket(error), pending)
        )
        with pytest.raises(raised, match=message):
            job.set("wavelength_nm", 1550)
        monkeypatch.undo()
    instrument.close()


def full_socket() -> tuple[socket.socket, socket.socket]:
    """A connected pair whose first end cannot take one more byte: its peer never reads."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            ours.send(b"x" * 65536)
    ours.setblocking(True)  # as pyvisa-py keeps its sockets
    return ours, peer


@pytest.mark.parametrize(("budget", "within"), [(5, r"0\.3 s"), (0.1, r"0\.\d+ s")])
def test_socket_sends_to_an_instrument_that_stops_reading_are_bounded(
    scpi_sim, monkeypatch, budget, within
):
    """A real socket whose peer stopped reading: the send waits for room for at most the
    read/write limit (0.3 s) or what is left of the job's budget, then DeviceTimeout."""
    from qkdtel.drivers.scpi import socket_io as module

    sim = RigSim()
    scpi_sim(sim)
    instrument = ScpiInstrument(
        VisaSettings(resource=sim.resource, timeout=0.3), TABLE, recovery_timeout=1.0
    )
    ours, peer = full_socket()
    try:
        with instrument.job(budget) as job:
            _, pending = module.socket_session(job.resource)
            monkeypatch.setattr(module, "socket_session", lambda resource: (ours, pending))
            started = time.monotonic()
            with pytest.raises(
                DeviceTimeout, match=r"no answer to sending ':SOUR:WAV 1550.000' within " + within
            ):
                job.set("wavelength_nm", 1550)
            assert time.monotonic() - started < min(budget, 0.3) + 1.0  # not blocked for good
            monkeypatch.undo()
    finally:
        ours.close()
        peer.close()
        instrument.close()


def test_a_socket_block_read_through_visa_is_exact_too(scpi_sim, monkeypatch):
    """No pyvisa-py socket to reach (`socket_session` None): VISA reads, slow but exact."""
    from qkdtel.drivers.scpi import socket_io as module

    monkeypatch.setattr(module, "socket_session", lambda resource: None)
    sim = RigSim()
    scpi_sim(sim)
    instrument = ScpiInstrument(VisaSettings(resource=sim.resource, timeout=0.3), TABLE)
    with instrument.job(5) as job:
        trace = job.query_block("trace_lf", "<f8", expected=len(LF_TRACE))
        np.testing.assert_array_equal(trace, LF_TRACE)
        assert job.get("power_dbm") == -12.34
    sim.faults.truncate_blocks = "cut"
    cut = r"header declares 16000 bytes, the message ended after 8000"
    with pytest.raises(Malformed, match=cut), instrument.job(5) as job:
        job.query_block("trace_lf", "<f8", expected=len(LF_TRACE))
    instrument.close()


def test_changed_pyvisa_py_internals_fall_back_to_pyvisas_public_api(scpi_sim, monkeypatch, caplog):
    """A pyvisa-py release that renamed the read-ahead buffer the socket path reads: the layer
    notices, says so once, and works through pyvisa's public API. Renaming the attribute this
    layer looks up is a fault injection: no real pyvisa-py at hand has other internals."""
    from qkdtel.drivers.scpi import socket_io

    monkeypatch.setattr(socket_io, "_READ_AHEAD", "_read_ahead_renamed")
    monkeypatch.setattr(socket_io, "_warned", False)
    sim = RigSim()
    scpi_sim(sim)
    instrument = ScpiInstrument(VisaSettings(resource=sim.resource, timeout=0.3), TABLE)
    with caplog.at_level("WARNING", logger=socket_io.__name__):
        for _ in range(2):
            with instrument.job(5) as job:
                assert socket_io.socket_session(job.resource) is None
                job.set("wavelength_nm", 1550)
                assert job.get("power_dbm") == -12.34
                trace = job.query_block("trace_lf", "<f8", expected=len(LF_TRACE))
                np.testing.assert_array_equal(trace, LF_TRACE)
    warnings = [r.getMessage() for r in caplog.records if r.name == socket_io.__name__]
    assert len(warnings) == 1, warnings
    assert "_read_ahead_renamed" in warnings[0] and "public API" in warnings[0]
    sim.faults.truncate_blocks = "cut"
    cut = r"header declares 16000 bytes, the message ended after 8000"
    with pytest.raises(Malformed, match=cut), instrument.job(5) as job:
        job.query_block("trace_lf", "<f8", expected=len(LF_TRACE))
    instrument.close()


def test_a_socket_block_stalled_mid_data_is_a_timeout():
    """Silence after data that does not end in the terminator: stalled, not truncated."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while not stop.is_set():
                data = conn.recv(4096)
                if not data:
                    return
                if b":TRAC?" in data:
                    conn.sendall(encode_block(b"\x0a\x01" * 5000)[:5001])  # data ends in 0x01

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    settings = VisaSettings(resource=f"TCPIP::127.0.0.1::{port}::SOCKET", timeout=0.2)
    instrument = ScpiInstrument(settings, TABLE, recovery_timeout=0.2)
    try:
        with (
            pytest.raises(DeviceTimeout, match=r"no answer to ':TRAC\?' within 0.2 s"),
            instrument.job(5) as job,
        ):
            job.query_block("trace", "<f4")
    finally:
        stop.set()
        instrument.close()
        server.close()
        worker.join(2)


# -- locking, connections, configuration ------------------------------------------------------


def test_one_job_at_a_time_per_resource_across_instances(scpi_sim):
    sim = RigSim()
    scpi_sim(sim)
    first = ScpiInstrument(VisaSettings(resource=sim.resource), TABLE)
    other_spelling = sim.resource.replace("TCPIP::", "TCPIP0::")
    second = ScpiInstrument(VisaSettings(resource=other_spelling), TABLE)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with first.job(5) as job:
            job.get("identify")
            holding.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert holding.wait(5)
        with (
            pytest.raises(DeviceTimeout, match=r"busy: another job held it for all of 0\.2 s"),
            second.job(0.2),
        ):
            pass
    finally:
        release.set()
        worker.join(5)
    with second.job(5) as job:
        assert job.get("power_dbm") == -12.34
    assert {r.connection for r in sim.received()} == {1}  # one shared connection
    first.close()
    second.close()


def test_unreachable_instruments_are_refused(tmp_path):
    port = free_tcp_port()
    closed = ScpiInstrument(VisaSettings(resource=f"TCPIP::127.0.0.1::{port}::SOCKET"), TABLE)
    with (
        pytest.raises(Refused, match=r"TCPIP0::127.0.0.1::\d+::SOCKET: sending '\*CLS'"),
        closed.job(2),
    ):
        pass
    closed.close()
    missing = ScpiInstrument(VisaSettings(resource=f"ASRL{tmp_path}/ttyNONE::INSTR"), TABLE)
    with pytest.raises(Refused, match=r"ttyNONE::INSTR: .*No such file"), missing.job(2):
        pass
    missing.close()


def test_visa_settings_are_validated_with_the_key_named():
    assert canonical_resource("TCPIP::10.0.0.5::10001::SOCKET") == "TCPIP0::10.0.0.5::10001::SOCKET"
    settings = VisaSettings(resource="ASRL/dev/ttyUSB0::INSTR", baud_rate=9600, parity="even")
    assert settings.resource == "ASRL/dev/ttyUSB0::INSTR"
    for document, where, why in [
        ({"resource": "osa.lab:10001"}, "resource", "Could not parse"),
        ({"resource": "TCPIP::h::5025::SOCKET", "baud_rate": 9600}, "baud_rate", "serial (ASRL)"),
        ({"resource": "TCPIP::h::INSTR", "read_termination": ";"}, "read_termination", "use "),
        ({"resource": "USB0::0x0957::0x1234::MY1::RAW"}, "resource", "only ::SOCKET and ::INSTR"),
    ]:
        with pytest.raises(ValidationError) as caught:
            VisaSettings.model_validate(document)
        (error,) = caught.value.errors()
        assert error["loc"] == (where,)
        assert why in error["msg"], error["msg"]


def test_command_templates_say_what_is_missing():
    table = CommandTable("t", {"trace": measurement(":TRAC:Y? {trace}")})
    with pytest.raises(ValueError, match=r"trace: command ':TRAC:Y\? \{trace\}' needs trace"):
        table["trace"].render_query("trace")
    assert table["trace"].render_query("trace", trace="TRA") == ":TRAC:Y? TRA"
    with pytest.raises(ValueError, match="trace cannot be set, only queried"):
        table["trace"].render_write("trace", 1)
    extended = table.extend("t2", abort=action(":ABOR"))
    assert set(extended) == {"trace", "abort"} and set(table) == {"trace"}


def test_simulated_instruments_send_with_cubic_and_no_nagle_delay():
    """Whatever the host's default (BBR on some), a simulator's connection sends like an
    instrument's stack: CUBIC, TCP_NODELAY (bench/README.md, scpi_transfer.py)."""
    from qkdtel.sims.scpi.tcp import like_an_instrument

    async def accepted_socket_options() -> tuple[bytes, int]:
        seen: asyncio.Future[tuple[bytes, int]] = asyncio.get_running_loop().create_future()

        async def on_connection(reader, writer):
            like_an_instrument(writer)
            sock = writer.get_extra_info("socket")
            seen.set_result(
                (
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                )
            )
            writer.close()

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 5)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    congestion, nodelay = asyncio.run(accepted_socket_options())
    assert congestion.rstrip(b"\0") == b"cubic"
    assert nodelay == 1

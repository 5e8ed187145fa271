"""The plugin SDK's contracts: a closed error tree with chained causes, options models taken
from the type parameter, and blocking drivers that keep a device taken while a timed-out
poll's thread still runs (against a real TCP device that stops answering)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import get_args

import pytest

from qkdtel.config import Device, DeviceConfig
from qkdtel.drivers.qkd_snmp import QkdSnmpDriver
from qkdtel.drivers.qkd_snmp.options import QkdSnmpOptions
from qkdtel.drivers.scpi.transport import visa_errors
from qkdtel.poller import DevicePoller
from qkdtel.sdk import (
    ERROR_KINDS,
    ConnectionLost,
    Driver,
    InstrumentError,
    Listener,
    NoOptions,
    PollError,
    Refused,
    Sample,
    StatusErrorClass,
)

METRICS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def documented_error_classes() -> set[str]:
    """The values docs/metrics.md lists for `qkdtel_device_status.error_class`."""
    (row,) = [ln for ln in METRICS.read_text().splitlines() if ln.startswith("| error_class |")]
    values = row.split("|")[3]
    return {v.strip().strip('"') for v in values.split(",")} - {""}


def test_error_kinds_are_what_the_metrics_contract_documents():
    status_classes = set(get_args(StatusErrorClass))
    assert status_classes == ERROR_KINDS | {"internal"}
    assert documented_error_classes() == status_classes


def test_every_error_class_of_the_tree_is_drawn_at_its_top():
    import qkdtel.sdk._errors as module

    classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, PollError)]
    assert {c.kind for c in classes} == ERROR_KINDS
    for cls in classes:
        assert re.search(rf"\b{cls.__name__}\s+kind \"{cls.kind}\"", module.__doc__), cls


def test_the_set_of_kinds_is_closed():
    with pytest.raises(TypeError, match="kind 'vendor_specific' is not one of"):

        class VendorError(PollError):
            kind = "vendor_specific"  # type: ignore[assignment]

    class QueueEntry(InstrumentError):  # a subclass keeps its parent's kind
        pass

    assert QueueEntry.kind == "instrument_error"


def test_a_lost_connection_is_its_own_class_with_its_cause_chained():
    reset = ConnectionResetError(104, "Connection reset by peer")
    with pytest.raises(ConnectionLost) as caught, visa_errors("TCPIP::osa::SOCKET", "query"):
        raise reset
    assert caught.value.kind == "connection_lost"
    assert caught.value.__cause__ is reset
    with pytest.raises(Refused) as refused, visa_errors("TCPIP::osa::SOCKET", "connect"):
        raise ConnectionRefusedError(111, "Connection refused")
    assert isinstance(refused.value.__cause__, ConnectionRefusedError)


def test_options_model_comes_from_the_type_parameter():
    assert QkdSnmpDriver.options_model is QkdSnmpOptions

    class Plain(Driver):
        async def poll(self) -> list[Sample]:
            return []

    assert Plain.options_model is NoOptions
    assert Listener.options_model is NoOptions


def test_the_sdk_loads_nothing_of_the_daemon():
    code = "import sys, qkdtel.sdk; print(sorted(m for m in sys.modules if m.startswith('qkdtel')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = eval(out)  # a list literal printed by the child
    assert loaded and all(m == "qkdtel" or m.startswith("qkdtel.sdk") for m in loaded), loaded


class StallingServer:
    """A real device's management port that stops answering: it accepts connections and
    sends its banner line only once `release()` is called (and at once after that)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.released = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        self.held.append(conn)
        self.released.wait()
        with conn:
            conn.sendall(b"OTDR-42 ready\n")

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.sock.close()


@pytest.fixture
def stalling_server():
    server = StallingServer()
    yield server
    server.close()


async def wait_until(condition, limit: float = 5.0) -> None:
    give_up = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        await asyncio.sleep(0.02)


def test_a_timed_out_blocking_poll_keeps_the_device_busy_until_its_thread_returns(
    tcp_probe_driver, stalling_server
):
    from qkdtel.plugins import load_driver

    options = load_driver("tcp_banner").options_model(address=stalling_server.address)
    config = DeviceConfig(name="otdr-mgmt", driver="tcp_banner", interval=0.2, timeout=0.3)
    poller = DevicePoller.create(Device(config, options), max_backoff=1.0)

    async def scenario() -> list:
        results = [await poller.poll()]  # the device stalls: the collector gives up
        started = time.monotonic()
        results.append(await poller.poll())  # its thread still reads: skipped as busy
        busy_took = time.monotonic() - started
        assert any(t.name == "poll:otdr-mgmt" for t in threading.enumerate())
        stalling_server.release()  # the device answers: the thread returns
        await wait_until(lambda: not poller.driver.busy)
        results.append(await poller.poll())
        return [*results, busy_took]

    timed_out, busy, resumed, busy_took = asyncio.run(scenario())
    assert timed_out.error_class == "timeout"
    assert busy.error_class == "busy" and "still running" in busy.error
    assert busy_took < 0.3  # not another 0.3 s timeout: no second conversation was started
    assert busy.status.fields["consecutive_failures"] == 1  # the timeout, not the skip
    assert len(stalling_server.held) == 2  # the stalled poll and the resumed one, no third
    assert resumed.ok, resumed.error
    assert resumed.samples[0].fields["banner"] == "OTDR-42 ready"


def test_aclose_returns_promptly_while_a_poll_thread_hangs(tcp_probe_driver, stalling_server):
    from qkdtel.plugins import load_driver

    banner = load_driver("tcp_banner")

    class LockingBanner(banner):  # like the SCPI layer: close waits for the I/O lock
        close_timeout = 0.5

        def __init__(self, *args):
            super().__init__(*args)
            self.io_lock = threading.Lock()

        def poll_blocking(self) -> list[Sample]:
            with self.io_lock:
                return super().poll_blocking()

        def close_blocking(self) -> None:
            with self.io_lock:
                pass

    driver = LockingBanner("otdr-mgmt", banner.options_model(address=stalling_server.address), 0.3)

    async def scenario() -> tuple[float, int]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(driver.poll(), timeout=0.3)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.ensure_future(ticker())
        started = time.monotonic()
        await driver.aclose()
        took = time.monotonic() - started
        beat.cancel()
        return took, ticks

    took, ticks = asyncio.run(scenario())
    assert 0.45 <= took < 2.0  # close_timeout, not the hung thread's lifetime
    assert ticks >= 10  # the event loop kept running while close waited

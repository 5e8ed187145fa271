"""Bench tooling against the simulated instruments over real transports (pyvisa-py TCPIP
SOCKET): `qkdtel osa sweep`, `qkdtel otdr acquire` and the `qkdtel.lab` API they are built
on -- the published channel plans of links 4 and 8 in the table, the OTDR's events, length and
loss, PNG plots that are really PNGs of the expected size, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from qkdtel.cli import main
from qkdtel.lab import OsaSession, OtdrSession, PollError, Progress, SpectrumTrace
from qkdtel.lab_plots import DPI, SIZE_IN
from tests.fixtures_scpi import free_tcp_port

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rows(text: str) -> dict[str, list[str]]:
    """Table rows by their first cell, for rows whose first cell is a number."""
    found = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0].replace(".", "", 1).isdigit() and len(cells) > 3:
            found[cells[0]] = cells[1:]
    return found


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = image.imread(path).shape
    assert (width, height) == (SIZE_IN[0] * DPI, SIZE_IN[1] * DPI)


def test_osa_sweep_lists_link_4_channels_and_the_cv_notch(osa_sim, tmp_path, capsys):
    rig = osa_sim("yokogawa", "4")
    png, npz = tmp_path / "link4.png", tmp_path / "link4.npz"
    code = main(
        [
            "osa",
            "sweep",
            rig.sim.resource,
            "--dialect=yokogawa",
            "--start=1528",
            "--stop=1568",
            "--rbw=0.02",
            "--points=5001",
            "--quantum=37,38",
            f"--plot={png}",
            f"--trace={npz}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    table = rows(out)
    classical = {ch for ch, cells in table.items() if cells[2] == "classical"}
    assert classical == {"21", "22", "23", "30"}
    for channel in classical:  # peak, power, OSNR: the simulator's 10G carriers
        peak, _power, osnr = map(float, table[channel][3:6])
        assert -35 < peak < -25 and osnr > 25
    for channel in ("37", "38"):
        assert table[channel][2] == "quantum"
        depth, in_band = map(float, table[channel][3:5])
        assert depth > 15 and in_band < -60
    assert "AQ6370" in out
    assert_png(png)
    trace = SpectrumTrace.load(npz)
    assert len(trace.wavelength_nm) == 5001 and trace.resolution_nm == 0.02
    assert "AQ6370" in trace.meta["identity"]


def test_osa_sweep_anritsu_link_8_with_a_csv_trace(osa_sim, tmp_path, capsys):
    rig = osa_sim("anritsu", "8")
    png, csv = tmp_path / "link8.png", tmp_path / "link8.csv"
    argv = ["osa", "sweep", rig.sim.resource, "--dialect", "anritsu", "--rbw", "0.03"]
    code = main([*argv, "--points", "5001", "--plot", str(png), "--trace", str(csv)])
    out = capsys.readouterr().out
    assert code == 0, out
    classical = {ch for ch, cells in rows(out).items() if cells[2] == "classical"}
    assert classical == {"25", "29", "34", "59", "60"}
    assert "DMA?" in [r.text for r in rig.sim.received()]  # ASCII, the dialect's only way
    assert_png(png)
    assert len(SpectrumTrace.load(csv).power_dbm) == 5001


def test_osa_api_context_manager_and_typed_report(osa_sim):
    rig = osa_sim("yokogawa", "4")
    with OsaSession.open(rig.sim.resource, dialect="yokogawa", timeout=2) as osa:
        assert osa.identity.startswith("YOKOGAWA,AQ6370")
        with pytest.raises(ValueError, match=r"resolution_nm: .*not 0\.03"):
            osa.sweep(rbw_nm=0.03)  # refused before anything is sent
        assert not any("RESOLUTION" in r.text.upper() for r in rig.sim.received())
        sweep = osa.sweep(center_nm=1550, span_nm=30, rbw_nm=0.05, points=3001)
    report = sweep.itu_report(grid_ghz=100, quantum_channels=[37, 38])
    assert [c.label for c in report.classical] == ["21", "22", "23", "30"]
    assert report.channel(30).osnr_db == pytest.approx(32, abs=1.5)
    assert [n.label for n in report.notches] == ["37", "38"]
    assert sweep.trace.wavelength_nm[0] == pytest.approx(1535, abs=0.01)
    with pytest.raises(PollError, match="closed"):
        osa.sweep()
    with pytest.raises(ValueError, match=r"37\.5 are not on the 100 GHz grid"):
        sweep.itu_report(quantum_channels=[37.5])


def test_otdr_acquire_shows_progress_events_length_and_compares_with_baseline(
    otdr_sim, tmp_path, capsys
):
    rig = otdr_sim("8", speed=100)
    argv = [
        "otdr",
        "acquire",
        rig.sim.resource,
        "--wavelength=1550",
        "--range=70000",
        "--averaging=30",
        "--progress-interval=0.02",
        f"--baseline={tmp_path / 'baselines'}",
        "--link=8",
    ]
    assert main([*argv, f"--plot={tmp_path / 'first.png'}"]) == 0
    out = capsys.readouterr().out
    assert "acquiring 1550 nm" in out and "100%" in out
    events = rows(out)
    assert len(events) == len(rig.route.events) + 1  # and the far end
    assert events[str(len(events))][1] == "end"
    assert sum(cells[1] == "reflective" for cells in events.values()) == 3
    assert "fibre length 33.100 km; total loss 11.80 dB" in out
    assert "saved as it" in out and (tmp_path / "baselines" / "8_1550nm.json").exists()

    assert main([*argv, f"--plot={tmp_path / 'again.png'}"]) == 0
    assert "no change beyond the thresholds" in capsys.readouterr().out
    assert_png(tmp_path / "again.png")


def test_otdr_api_reports_progress_and_returns_the_event_table(otdr_sim):
    rig = otdr_sim("9", speed=100)
    progress: list[Progress] = []
    with OtdrSession.open(rig.sim.resource, timeout=2, name="link9") as otdr:
        trace = otdr.acquire(
            range_m=10_000, averaging_s=30, progress_interval=0.02, on_progress=progress.append
        )
    percents = [p.percent for p in progress]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] == 100
    assert {p.device for p in progress} == {"link9"}
    assert trace.fibre_length_m == pytest.approx(rig.route.length_m, abs=2 * trace.spacing_m)
    assert trace.events[-1].type.value == "end"
    assert np.isfinite(trace.values_db).all()


def test_scpi_error_is_one_line_and_exit_1(otdr_sim, capsys):
    rig = otdr_sim("9")
    code = main(["otdr", "acquire", rig.sim.resource, "--pulse=123", "--range=10000"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and "PULSe:WIDTh 123NS' failed: -222" in err


@pytest.mark.parametrize("command", [["osa", "sweep"], ["otdr", "acquire"]])
def test_unreachable_instrument_is_one_line_and_exit_1(command):
    resource = f"TCPIP::127.0.0.1::{free_tcp_port()}::SOCKET"
    done = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", *command, resource, "--timeout=2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: TCPIP0::127.0.0.1::{resource.split('::')[2]}::SOCKET: sending '*CLS': "
        "Connection refused"
    ]

"""Bench commands as an operator sees them: OSA sweeps show progress like OTDR acquisitions,
plots say which instrument and when, an OTDR acquisition that raises a baseline alarm exits 3
and marks the alarm on its plot; against the simulated instruments over real transports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from qkdtel.cli import main
from tests.test_lab import assert_png


def red_columns(png: Path) -> set[int]:
    """x of the image columns holding a good run of pure-ish red pixels (the alarm marks)."""
    pixels = image.imread(png)[:, :, :3]
    red = (pixels[:, :, 0] > 0.9) & (pixels[:, :, 1] < 0.55) & (pixels[:, :, 2] < 0.55)
    return {int(x) for x in np.nonzero(red.sum(axis=0) > 100)[0]}


def test_osa_sweep_shows_its_progress_and_the_plot_names_the_analyser(osa_sim, tmp_path, capsys):
    rig = osa_sim("yokogawa", "4")
    png = tmp_path / "sweep.png"
    code = main(["osa", "sweep", rig.sim.resource, "--points=2001", f"--plot={png}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "sweeping YOKOGAWA,AQ6370" in out
    assert_png(png)


def test_otdr_alarm_exits_3_and_is_marked_on_the_plot(otdr_sim, tmp_path, capsys):
    rig = otdr_sim("8", speed=100)
    argv = [
        *("otdr", "acquire", rig.sim.resource, "--range=70000", "--averaging=30"),
        *("--progress-interval=0.02", f"--baseline={tmp_path / 'b'}", "--link=8"),
    ]
    assert main([*argv, f"--plot={tmp_path / 'baseline.png'}"]) == 0
    capsys.readouterr()
    rig.thread.call(lambda: rig.sim.add_loss(12_000.0, 1.5))  # a bend 12 km out
    code = main([*argv, f"--plot={tmp_path / 'bend.png'}"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "new_event" in out or "event_loss_change" in out
    assert_png(tmp_path / "bend.png")
    assert red_columns(tmp_path / "bend.png"), "no alarm marked on the plot"
    assert not red_columns(tmp_path / "baseline.png")


def test_powermeter_read_beside_osa_and_otdr(power_meter, capsys):
    resource = power_meter.line.resource
    code = main(["powermeter", "read", resource, "--baud", "115200", "--wavelength", "1550"])
    out = capsys.readouterr().out
    assert code == 0, out
    (row,) = [line.split() for line in out.splitlines() if line.strip().startswith("1/1")]
    assert row[1] == "1550"
    assert float(row[2]) == pytest.approx(power_meter.sim.expected_dbm(), abs=0.3)
    assert float(row[3]) == pytest.approx(10 ** (float(row[2]) / 10) * 1000, rel=1e-3)


def test_powermeter_read_of_an_absent_port_is_one_line_exit_1(tmp_path, capsys):
    code = main(["powermeter", "read", f"ASRL{tmp_path / 'nothing'}::INSTR", "--timeout=0.5"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1

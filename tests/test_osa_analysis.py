"""ITU-grid analysis of OSA traces, on spectra drawn from the simulator's model of links 4 and 8.

The model (`sims/osa/spectrum.py`) is written independently of the analysis: it knows each
carrier's total power and the noise density, and the analysis must get them back from the
displayed trace alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qkdtel.drivers.optics import channel_label, channel_thz, on_grid
from qkdtel.drivers.osa.analysis import SpectrumTrace, analyse, grid_channels, total_power_dbm
from qkdtel.sims.osa.spectrum import Carrier, LinkSpectrum, link_spectrum
from qkdtel.sims.topology import load_topology

TOPOLOGY = load_topology()
FLOOR_DBM = -88.0  # the analyser's own noise floor (a high sensitivity)


def sweep(
    spectrum: LinkSpectrum, rbw_nm: float = 0.05, points: int = 4001, seed: int = 1
) -> SpectrumTrace:
    wavelength = np.linspace(1528.0, 1567.0, points)
    power = spectrum.trace_dbm(wavelength, rbw_nm, FLOOR_DBM, np.random.default_rng(seed))
    return SpectrumTrace(wavelength, power, rbw_nm)


def test_grid_numbers_frequencies_and_labels():
    assert channel_thz(34) == pytest.approx(193.4)
    assert 299_792.458 / channel_thz(34) == pytest.approx(1550.116, abs=1e-3)
    assert channel_label(34.0) == "34" and channel_label(34.5) == "34.5"
    assert on_grid(34.5, 50) and not on_grid(34.5, 100) and not on_grid(34.25, 50)
    trace = sweep(link_spectrum(TOPOLOGY, "4"), points=101)
    assert grid_channels(trace, 100) == [float(c) for c in range(14, 62)]
    fifty = grid_channels(trace, 50)
    assert fifty[0] == 13.5 and fifty[-1] == 61.5 and len(fifty) == 97


@pytest.mark.parametrize(
    ("link", "occupied"),
    [("4", [21.0, 22.0, 23.0, 30.0]), ("8", [25.0, 29.0, 34.0, 59.0, 60.0])],
)
def test_links_channels_powers_and_osnr_come_back_from_the_trace(link, occupied):
    spectrum = link_spectrum(TOPOLOGY, link)
    analysis = analyse(sweep(spectrum), quantum_channels=spectrum.notch_channels)
    assert analysis.occupied == occupied
    by_channel = {c.channel: c for c in analysis.channels}
    for carrier in spectrum.carriers:
        found = by_channel[carrier.channel]
        assert found.power_dbm == pytest.approx(carrier.power_dbm, abs=0.1)
        assert found.osnr_db == pytest.approx(spectrum.osnr_db(carrier), abs=0.3)
        assert abs(found.peak_offset_ghz) < 3  # on the grid: the peak sits at the centre
    for channel in set(by_channel) - set(occupied):
        assert by_channel[channel].power_dbm is None and by_channel[channel].osnr_db is None


def test_the_cv_notch_of_link_4_is_measured():
    spectrum = link_spectrum(TOPOLOGY, "4")
    assert spectrum.notch_channels == (37, 38)  # the CV quantum channels crossing link 4
    rbw = 0.05
    analysis = analyse(sweep(spectrum, rbw), quantum_channels=[37, 38], quantum_bandwidth_ghz=40)
    assert [n.channel for n in analysis.notches] == [37, 38]
    for notch in analysis.notches:
        # what the model displays, noise-free, in the notch and beside it (ch 36, 39)
        centre = 299_792.458 / channel_thz(notch.channel)
        inside = spectrum.displayed_mw(np.array([centre]), rbw, FLOOR_DBM)[0]
        beside = [
            spectrum.displayed_mw(np.array([299_792.458 / channel_thz(c)]), rbw, FLOOR_DBM)[0]
            for c in (36, 39)
        ]
        expected_depth = 10 * np.log10(np.mean(beside) / inside)
        assert notch.depth_db == pytest.approx(expected_depth, abs=0.3)
        assert 23 < notch.depth_db < 25.1  # 25 dB notch, the analyser's floor shows through
        # in-band noise: the displayed density over 40 GHz (~0.32 nm at 1547 nm), integrated
        band_nm = 299_792.458 * 0.04 / channel_thz(notch.channel) ** 2
        expected_in_band = 10 * np.log10(inside * band_nm / rbw)
        assert notch.in_band_noise_dbm == pytest.approx(expected_in_band, abs=0.3)


def test_the_notch_reference_skips_occupied_neighbours():
    spectrum = link_spectrum(TOPOLOGY, "4")

    def lit(*channels: int) -> LinkSpectrum:
        extra = tuple(Carrier(c, "data", -20.0, 20.0) for c in channels)
        return dataclasses.replace(spectrum, carriers=(*spectrum.carriers, *extra))

    plain = analyse(sweep(spectrum), quantum_channels=[37, 38]).notches[0]
    # ch 36 lit: the reference comes from the dark 35 and 39 instead, the same floor
    crowded = analyse(sweep(lit(36)), quantum_channels=[37, 38])
    assert 36.0 in crowded.occupied
    assert crowded.notches[0].reference_dbm == pytest.approx(plain.reference_dbm, abs=0.3)
    assert crowded.notches[0].depth_db == pytest.approx(plain.depth_db, abs=0.3)
    # four lit below (33-36): only the upper side (39) gives a reference
    walled = analyse(sweep(lit(33, 34, 35, 36)), quantum_channels=[37, 38]).notches[0]
    assert walled.depth_db == pytest.approx(plain.depth_db, abs=0.3)
    # four lit on each side: no dark channel near enough, no depth rather than a wrong one
    boxed = analyse(sweep(lit(33, 34, 35, 36, 39, 40, 41, 42)), quantum_channels=[37, 38])
    assert boxed.notches[0].reference_dbm is None and boxed.notches[0].depth_db is None
    assert boxed.notches[0].in_band_noise_dbm == pytest.approx(plain.in_band_noise_dbm, abs=0.3)


def test_50_ghz_grid_finds_the_same_carriers_and_no_half_channels():
    spectrum = link_spectrum(TOPOLOGY, "4")
    analysis = analyse(sweep(spectrum), spacing_ghz=50)
    assert analysis.occupied == [21.0, 22.0, 23.0, 30.0]
    labels = {c.label for c in analysis.channels}
    assert {"21.5", "37.5"} <= labels
    power = {c.channel: c.power_dbm for c in analysis.channels}
    assert power[21.0] == pytest.approx(-20.0, abs=0.3)  # 20 GHz carriers fit a 50 GHz band


def test_added_loss_lowers_every_carrier_and_total_power():
    spectrum = link_spectrum(TOPOLOGY, "8")
    before = analyse(sweep(spectrum))
    after = analyse(sweep(spectrum.with_extra_loss(3.0), seed=2))
    for a, b in zip(before.channels, after.channels, strict=True):
        if a.occupied:
            assert b.power_dbm == pytest.approx(a.power_dbm - 3.0, abs=0.15)
            assert b.osnr_db == pytest.approx(a.osnr_db, abs=0.3)  # noise lost 3 dB too
    assert total_power_dbm(sweep(spectrum)) == pytest.approx(
        10 * np.log10(sum(10 ** (c.power_dbm / 10) for c in spectrum.carriers)), abs=0.2
    )


def test_channels_can_be_selected_and_bad_requests_are_named():
    trace = sweep(link_spectrum(TOPOLOGY, "4"))
    assert [c.channel for c in analyse(trace, channels=[30, 21]).channels] == [21.0, 30.0]
    with pytest.raises(ValueError, match=r"channels \[70\] are not inside the trace"):
        analyse(trace, channels=[21, 70])
    with pytest.raises(ValueError, match=r"quantum channels \[5\] are not inside the trace"):
        analyse(trace, quantum_channels=[5])
    with pytest.raises(ValueError, match="grid spacing is 100 or 50 GHz, not 25"):
        analyse(trace, spacing_ghz=25)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_traces_round_trip_through_files(tmp_path, suffix):
    trace = dataclasses.replace(sweep(link_spectrum(TOPOLOGY, "4")), meta={"link": "4"})
    path = trace.save(tmp_path / f"t{suffix}")
    loaded = SpectrumTrace.load(path)
    np.testing.assert_allclose(loaded.wavelength_nm, trace.wavelength_nm, atol=1e-6)
    np.testing.assert_allclose(loaded.power_dbm, trace.power_dbm, atol=1e-3)
    assert loaded.resolution_nm == 0.05 and loaded.meta == {"link": "4"}
    assert [p.name for p in tmp_path.iterdir()] == [f"t{suffix}"]  # no temporary file left
    with pytest.raises(ValueError, match=r"t.txt: a trace file ends in .npz or .csv"):
        trace.save(tmp_path / "t.txt")


def test_unusable_traces_are_refused():
    wavelength = np.array([1550.0, 1549.0, 1551.0])
    with pytest.raises(ValueError, match="wavelengths must increase"):
        SpectrumTrace(wavelength, np.zeros(3), 0.1)
    with pytest.raises(ValueError, match=r"must be 1-D arrays of one length"):
        SpectrumTrace(np.arange(4.0), np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="does not span one whole 100 GHz channel"):
        analyse(SpectrumTrace(np.linspace(1550.0, 1550.5, 11), np.zeros(11), 0.1))

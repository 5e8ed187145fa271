"""Event detection against the fibre model's ground truth, baseline comparison and storage.

No network here: traces come straight from the simulator's synthesis (the same function its
SCPI server uses), so every link of the MadQCI twin can be checked quickly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from qkdtel.drivers.otdr.analysis import analyse
from qkdtel.drivers.otdr.baseline import BaselineStore, Thresholds, compare
from qkdtel.drivers.otdr.trace import EventType, OtdrTrace
from qkdtel.sims.otdr.fibre import Acquisition, FibreRoute, route_for_link, synthesize
from qkdtel.sims.topology import load_topology

LINKS = {link.id: link for link in load_topology().links}


def acquire(route: FibreRoute, wavelength: int = 1550, pulse_ns: float = 1000, seed: int = 1):
    settings = Acquisition(wavelength, pulse_ns, max(2 * route.length_m, 5000.0), 30)
    values = synthesize(route, settings, np.random.default_rng(seed))
    return analyse(OtdrTrace(values, settings.spacing_m, wavelength, pulse_ns)), settings


@pytest.mark.parametrize("link_id", sorted(LINKS))
@pytest.mark.parametrize("wavelength", [1310, 1550])
def test_event_table_matches_the_fibre(link_id, wavelength):
    route = route_for_link(LINKS[link_id])
    pulse = 1000 if route.length_m > 10_000 else 300
    trace, settings = acquire(route, wavelength, pulse)

    assert trace.fibre_length_m == pytest.approx(route.length_m, abs=settings.spacing_m)
    assert trace.total_loss_db == pytest.approx(route.loss_db(wavelength), abs=0.05)
    found = [e for e in trace.events if e.type is not EventType.END]
    assert len(found) == len(route.events)
    for truth, event in zip(route.events, found, strict=True):
        # a small splice far out is a step in noise: placed within a third of a pulse
        assert event.distance_m == pytest.approx(truth.distance_m, abs=trace.pulse_length_m / 3)
        assert event.reflective == (truth.reflectance_db is not None)
        if event.loss_db is not None or truth.reflectance_db is None:
            assert event.loss_db == pytest.approx(truth.loss_db, abs=0.03)
        if truth.reflectance_db is not None:
            assert event.reflectance_db == pytest.approx(truth.reflectance_db, abs=1.0)
    end = trace.events[-1]
    assert end.type is EventType.END
    assert end.reflectance_db == pytest.approx(route.end_reflectance_db, abs=1.0)


def test_link_8_published_figures():
    trace, _ = acquire(route_for_link(LINKS["8"]))
    assert trace.fibre_length_m == pytest.approx(33_100, abs=1)
    assert trace.total_loss_db == pytest.approx(11.8, abs=0.05)
    # 3 patch panels (the spikes) and 8 splices on 33 km
    assert sum(e.type is EventType.REFLECTIVE for e in trace.events) == 3
    assert sum(e.type is EventType.NON_REFLECTIVE for e in trace.events) == 8


def test_loopback_doubles_the_trace_with_a_spike_at_the_far_site():
    route = route_for_link(LINKS["7"], loopback=True)  # Almagro(Distrito)-Norte, 3.9 km
    trace, settings = acquire(route, pulse_ns=100)
    assert trace.fibre_length_m == pytest.approx(7800, abs=settings.spacing_m)
    loop = [e for e in trace.events if abs(e.distance_m - 3900) <= 2]
    assert len(loop) == 1 and loop[0].type is EventType.REFLECTIVE
    assert trace.total_loss_db == pytest.approx(2 * 6.0 + 0.6, abs=0.1)


def test_a_fibre_longer_than_the_range_has_no_end():
    route = route_for_link(LINKS["8"])
    settings = Acquisition(1550, 1000, 20_000, 30)
    values = synthesize(route, settings, np.random.default_rng(0))
    trace = analyse(OtdrTrace(values, settings.spacing_m, 1550, 1000))
    assert trace.fibre_length_m is None
    assert all(e.type is not EventType.END for e in trace.events)


def test_bad_trace_input_is_refused_clearly():
    with pytest.raises(ValueError, match="at least 2 samples"):
        OtdrTrace(np.zeros(1), 1.0, 1550, 1000)
    with pytest.raises(ValueError, match="sample spacing"):
        OtdrTrace(np.zeros(10), 0.0, 1550, 1000)
    with pytest.raises(ValueError, match="1625 nm has no standard group index"):
        OtdrTrace(np.zeros(10), 1.0, 1625, 1000)


# -- comparison with a baseline ----------------------------------------------------------------


def test_added_loss_is_a_new_event_and_a_total_loss_alarm():
    route = route_for_link(LINKS["8"])
    baseline, _ = acquire(route, seed=1)
    current, _ = acquire(route.with_added_loss(12_000, 0.8), seed=2)
    alarms = {a.kind: a for a in compare(baseline, current, Thresholds())}
    assert set(alarms) == {"new_event", "total_loss_change"}
    assert alarms["new_event"].distance_m == pytest.approx(12_000, abs=15)
    assert alarms["new_event"].loss_db == pytest.approx(0.8, abs=0.03)
    assert alarms["total_loss_change"].loss_change_db == pytest.approx(0.8, abs=0.03)


def test_a_grown_loss_at_an_existing_splice_is_an_event_loss_change():
    route = route_for_link(LINKS["8"])
    splice = next(e for e in route.events if e.kind == "splice")
    baseline, _ = acquire(route, seed=1)
    current, _ = acquire(route.with_added_loss(splice.distance_m, 0.4), seed=2)
    alarms = [a for a in compare(baseline, current, Thresholds()) if a.kind != "total_loss_change"]
    assert [a.kind for a in alarms] == ["event_loss_change"]
    assert alarms[0].distance_m == pytest.approx(splice.distance_m, abs=15)
    assert alarms[0].loss_change_db == pytest.approx(0.4, abs=0.03)


def test_small_changes_and_noise_raise_nothing():
    route = route_for_link(LINKS["4"])
    baseline, _ = acquire(route, seed=1)
    current, _ = acquire(route.with_added_loss(9_000, 0.1), seed=2)  # below 0.3 dB
    assert compare(baseline, current, Thresholds()) == []


def test_a_weak_new_reflection_is_still_an_alarm():
    route = route_for_link(LINKS["8"])
    baseline, _ = acquire(route, seed=1)
    current, _ = acquire(route.with_reflection(25_500, -50.0, loss_db=0.05), seed=2)
    alarms = compare(baseline, current, Thresholds())
    assert [a.kind for a in alarms] == ["new_event"]
    assert alarms[0].reflectance_db == pytest.approx(-50, abs=1)


def test_comparing_different_wavelengths_is_refused():
    route = route_for_link(LINKS["9"])
    a, _ = acquire(route, 1550, 300)
    b, _ = acquire(route, 1310, 300)
    with pytest.raises(ValueError, match="cannot compare a 1310 nm trace with a 1550 nm"):
        compare(a, b, Thresholds())


def test_baseline_store_round_trip_and_damaged_files(tmp_path):
    store = BaselineStore(tmp_path / "baselines")
    assert store.load("8", 1550) is None
    trace, _ = acquire(route_for_link(LINKS["8"]))
    path = store.save("8", trace)
    assert path.name == "8_1550nm.json"
    loaded = store.load("8", 1550)
    assert loaded is not None
    assert loaded.events == trace.events
    assert np.array_equal(loaded.values_db, trace.values_db.astype(np.float32))
    assert (loaded.fibre_length_m, loaded.total_loss_db) == (33_100.0, 11.8)

    document = json.loads(path.read_text())
    document["points"] += 1
    path.write_text(json.dumps(document))
    with pytest.raises(
        ValueError, match=r"8_1550nm\.json: not a baseline trace \(\d+ samples, the header says"
    ):
        store.load("8", 1550)
    path.write_text("{}")
    with pytest.raises(ValueError, match="format is None"):
        store.load("8", 1550)

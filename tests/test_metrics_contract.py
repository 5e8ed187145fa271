"""docs/metrics.md is the contract: everything the SNMP driver and the trap receiver emit is
documented there, as the documented kind (tag, or field of the documented type), with one of
the documented values where the page lists them; and every documented qkd_link / qkd_module
name is produced by some vendor profile (the page describes no field nobody writes).

Emitted points come from the real thing: every module of the simulated MadQCI twin polled
through the collector's own poller (which adds `device` and the configured tags), and one
notification of every kind sent by the simulated agents to a running trap receiver.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from qkdtel.config import load_config
from qkdtel.drivers.qkd_snmp.options import TrapOptions
from qkdtel.drivers.qkd_snmp.traps import TrapReceiver
from qkdtel.poller import DevicePoller, PollResult
from qkdtel.sdk import Sample
from qkdtel.sims.snmp.profiles import PROFILES as SIM_PROFILES
from qkdtel.sims.snmp.profiles import TrapCondition
from tests.metrics_doc import Column, Contract, load_contract, parse_contract

CONFIGURED = "configured tags"
PYTHON_TYPES = {"float": float, "int": int, "bool": bool, "string": str}


def problem(column: Column, value: object, is_tag: bool) -> str | None:
    """Why `value` breaks the documented `column`, or None."""
    if is_tag != (column.kind == "tag"):
        return f"documented as {column.written}"
    if column.kind == "tag":
        if not isinstance(value, str) or not value:
            return "a tag must be a non-empty string"
    # bool is an int in Python, but a different field type in InfluxDB
    elif type(value) is not PYTHON_TYPES[column.type]:
        return f"documented as {column.written}, got {type(value).__name__}"
    if column.values is not None and str(value) not in column.values:
        return f"{value!r} is not one of {sorted(column.values)}"
    return None


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract()


def violations(samples: list[Sample], contract: Contract) -> list[str]:
    """Every way `samples` break the contract, one line each."""
    configured = contract[CONFIGURED]
    out = []
    for sample in samples:
        documented = contract.get(sample.measurement)
        if documented is None or sample.measurement == CONFIGURED:
            out.append(f"measurement {sample.measurement} is not documented")
            continue
        for names, is_tag in ((sample.tags, True), (sample.fields, False)):
            for name, value in names.items():
                entry = documented.get(name) or (configured.get(name) if is_tag else None)
                if entry is None:
                    out.append(f"{sample.measurement}.{name} is not documented")
                elif (why := problem(entry, value, is_tag)) is not None:
                    out.append(f"{sample.measurement}.{name}: {why}")
    return sorted(set(out))


def test_the_page_parses_into_the_shapes_the_driver_relies_on(contract):
    assert contract["qkd_link"]["qber"] == Column("field", "float", "fraction")
    assert contract["qkd_link"]["qber"].values is None
    assert contract["qkd_link"]["key_generating"].written == "field bool"
    assert contract["qkd_link"]["direction"].written == "tag"
    assert contract["qkd_link"]["direction"].values == frozenset({"tx", "rx"})
    assert contract["qkd_event"]["severity"].values >= {"critical", "major", "warning", "info"}
    assert contract[CONFIGURED]["node"].kind == "tag"


@pytest.mark.parametrize(
    "row", ["| qber | field double | fraction | |", "| Qber | field float | fraction | |"]
)
def test_a_row_the_reader_cannot_read_is_an_error(row):
    with pytest.raises(ValueError, match=r"docs/metrics\.md"):
        parse_contract(
            f"## qkd_link\n\n| name | kind | unit/values | meaning |\n|---|---|---|---|\n{row}\n"
        )


def test_the_checker_catches_each_kind_of_breach(contract):
    bad = [
        Sample("qkd_links", {}, {"qber": 0.1}),
        Sample("qkd_link", {"colour": "red"}, {"qber": 1}),
        Sample("qkd_link", {"vendor": "acme"}, {"key_generating": 1, "peer": "x"}),
    ]
    assert violations(bad, contract) == [
        "measurement qkd_links is not documented",
        "qkd_link.colour is not documented",
        "qkd_link.key_generating: documented as field bool, got int",
        "qkd_link.peer: documented as tag",
        "qkd_link.qber: documented as field float, got int",
        "qkd_link.vendor: 'acme' is not one of ['ait', 'hwdu', 'idq', 'toshiba']",
    ]


def poll_twin(config_path: Path) -> list[Sample]:
    """Every module of the twin, polled twice (rates need two readings) by the real poller."""
    loaded = load_config(config_path)

    async def main() -> list[Sample]:
        pollers = [DevicePoller.create(device, max_backoff=60.0) for device in loaded.devices]
        samples: list[Sample] = []
        # A few polls at a time, as the daemon's `concurrency` would: the 28 agents share one
        # thread in this process, and 28 polls at once on a loaded machine outwait the 1 s
        # request timeout of the generated config.
        gate = asyncio.Semaphore(4)

        async def poll(poller: DevicePoller) -> PollResult:
            async with gate:
                return await poller.poll()

        try:
            for _ in range(2):
                results = await asyncio.gather(*(poll(p) for p in pollers))
                failed = [f"{r.device}: {r.error_class} {r.error}" for r in results if not r.ok]
                assert not failed, failed
                samples += [s for r in results for s in r.samples]
                await asyncio.sleep(0.2)
        finally:
            await asyncio.gather(*(p.driver.aclose() for p in pollers))
        return samples

    return asyncio.run(main())


@pytest.mark.parametrize("version", ["v2c", "v3"])
def test_polled_points_of_every_profile_are_documented(snmp_sims, contract, version):
    path = snmp_sims.config_path_v3 if version == "v3" else snmp_sims.config_path
    samples = poll_twin(path)
    assert violations(samples, contract) == []

    emitted: dict[str, set[str]] = defaultdict(set)
    vendors = set()
    for sample in samples:
        emitted[sample.measurement] |= set(sample.tags) | set(sample.fields)
        vendors.add(sample.tags.get("vendor"))
    assert vendors == {"idq", "toshiba", "hwdu", "ait"}
    for measurement in ("qkd_link", "qkd_module"):
        # `module`: only SD-QKD nodes (one device, many modules) need it; tests/test_sdqkd_node.py
        never = set(contract[measurement]) - emitted[measurement] - {"module"}
        assert never == set(), f"{measurement}: documented but no profile emits {sorted(never)}"


def test_one_notification_of_every_kind_gives_documented_events(single_agent, contract):
    profiles = ("cerberis3", "toshiba", "hwdu_cv", "ait_cv")

    async def main() -> list[Sample]:
        received: list[Sample] = []
        arrived = asyncio.Event()

        async def collect(samples: list[Sample]) -> None:
            received.extend(samples)
            if len(received) == len(profiles) * len(TrapCondition):
                arrived.set()

        receiver = TrapReceiver(TrapOptions(listen="127.0.0.1:0"), [], collect)
        await receiver.start()
        try:
            for profile in profiles:
                sim = single_agent(profile, trap_target=receiver.address)
                for event in TrapCondition:
                    row = sim.agent.rows[0]
                    sim.background.call(
                        lambda e=event, r=row, s=sim: asyncio.ensure_future(
                            s.agent.notify(e, r, receiver.address)
                        )
                    )
            await asyncio.wait_for(arrived.wait(), timeout=10)
        finally:
            await receiver.stop()
        return received

    events = asyncio.run(main())
    assert violations(events, contract) == []
    assert {e.fields["notification"] for e in events} == {
        name for profile in profiles for name in SIM_PROFILES[profile].notifications.values()
    }
    assert {e.tags["event"] for e in events} >= {
        "qber_threshold",
        "excess_noise_threshold",
        "key_store_empty",
    }


# -- the SCPI/serial instruments: OTDR and bench power meter ----------------------------------

OTDR_MEASUREMENTS = ("otdr_trace", "otdr_event", "otdr_alarm", "optical_power")


def test_otdr_and_power_meter_points_are_documented(otdr_sim, power_meter, tmp_path, contract):
    """Both drivers through the collector's poller; the OTDR with a baseline, then a bend,
    a new connector, a worse splice and a cut, so every kind of alarm is raised."""
    import yaml

    from qkdtel.config import load_config_text

    bench = otdr_sim("8", speed=300)
    otdr = bench.options(baseline_dir=str(tmp_path / "baselines"))
    document = {
        "devices": [
            {
                "name": "otdr-l8",
                "driver": "otdr",
                "timeout": 10,
                "tags": {"node": "Quevedo", "domain": "RM"},
                **otdr.model_dump(mode="json", exclude_none=True),
            },
            {
                "name": "bench-pm",
                "driver": "powermeter",
                "tags": {"node": "Quijano"},
                **power_meter.options().model_dump(mode="json", exclude_none=True),
            },
        ]
    }
    loaded = load_config_text(yaml.safe_dump(document))
    faults = [
        lambda: None,
        lambda: bench.sim.add_loss(17_500, 1.0),
        lambda: bench.sim.add_reflection(9_000, -45.0, 0.4),
        lambda: bench.sim.add_loss(bench.route.events[0].distance_m, 0.5),  # a splice grows
        lambda: bench.sim.cut(30_000),
    ]

    async def main() -> list[Sample]:
        pollers = [DevicePoller.create(device, max_backoff=60.0) for device in loaded.devices]
        samples: list[Sample] = []
        try:
            for fault in faults:
                bench.thread.call(fault)
                results = [await p.poll() for p in pollers]
                failed = [f"{r.device}: {r.error_class} {r.error}" for r in results if not r.ok]
                assert not failed, failed
                samples += [s for r in results for s in r.samples]
        finally:
            await asyncio.gather(*(p.driver.aclose() for p in pollers))
        return samples

    samples = asyncio.run(main())
    assert violations(samples, contract) == []
    emitted: dict[str, set[str]] = defaultdict(set)
    for sample in samples:
        emitted[sample.measurement] |= set(sample.tags) | set(sample.fields)
    alarm_kinds = {s.tags["alarm"] for s in samples if s.measurement == "otdr_alarm"}
    assert alarm_kinds == contract["otdr_alarm"]["alarm"].values
    for measurement in OTDR_MEASUREMENTS:
        never = set(contract[measurement]) - emitted[measurement]
        assert never == set(), f"{measurement}: documented but never emitted {sorted(never)}"


OSA_MEASUREMENTS = ("osa_sweep", "osa_channel", "osa_quantum_channel")


def test_osa_points_are_documented(osa_sim, tmp_path, contract):
    """Both OSA dialects through the collector's poller: link 4 (with its CV notch) on the
    Yokogawa class, link 8 on the Anritsu class, a 50 GHz grid, traces written to files."""
    import yaml

    from qkdtel.config import load_config_text

    link4, link8 = osa_sim("yokogawa", "4"), osa_sim("anritsu", "8")
    document = {
        "devices": [
            link4.device(
                "osa-l4",
                timeout=10,
                tags={"node": "Norte", "domain": "TID"},
                trace_dir=str(tmp_path / "traces"),
            ),
            link8.device("osa-l8", timeout=10, tags={"node": "Quevedo"}, grid_ghz=50),
        ]
    }
    loaded = load_config_text(yaml.safe_dump(document))

    async def main() -> list[Sample]:
        pollers = [DevicePoller.create(device, max_backoff=60.0) for device in loaded.devices]
        try:
            results = [await p.poll() for p in pollers]
        finally:
            await asyncio.gather(*(p.driver.aclose() for p in pollers))
        failed = [f"{r.device}: {r.error_class} {r.error}" for r in results if not r.ok]
        assert not failed, failed
        return [s for r in results for s in r.samples]

    samples = asyncio.run(main())
    assert violations(samples, contract) == []
    emitted: dict[str, set[str]] = defaultdict(set)
    for sample in samples:
        emitted[sample.measurement] |= set(sample.tags) | set(sample.fields)
    assert {s.tags["grid"] for s in samples if s.measurement == "osa_channel"} == {"100", "50"}
    for measurement in OSA_MEASUREMENTS:
        never = set(contract[measurement]) - emitted[measurement]
        assert never == set(), f"{measurement}: documented but never emitted {sorted(never)}"

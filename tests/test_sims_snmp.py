"""The SNMP simulators of the QKD modules, checked with independent tools (Net-SNMP's
snmpwalk/snmpget/snmptrapd) and against the published MadQCI figures."""

from __future__ import annotations

import functools
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyasn1.codec.ber import decoder
from pysnmp.proto import api

from qkdtel.config import load_config
from qkdtel.mibs import mib_builder
from qkdtel.sims.__main__ import main as sims_main
from qkdtel.sims.clock import ManualClock
from qkdtel.sims.process import SimsProcess
from qkdtel.sims.snmp.agent import Credentials, engine_id
from qkdtel.sims.snmp.network import SimNetwork
from qkdtel.sims.snmp.physics import Phase
from qkdtel.sims.snmp.profiles import PROFILES
from qkdtel.sims.topology import TopologyError, parse_topology
from tests.fixtures_snmp import free_udp_port

DAY = 86_400.0
SNMPTRAPOID = "1.3.6.1.6.3.1.1.4.1.0"

# The published per-link averages (shared/DOMAIN.md): link, family, SKR kbit/s, QBER %.
PUBLISHED = [
    ("1", "hwdu_cv", 3.3, None),
    ("2", "hwdu_cv", 5.5, None),
    ("2", "hwdu_cv", 6.2, None),
    ("2", "cerberis3", 1.9, 2.4),
    ("3", "cerberis3", 2.04, 2.2),
    ("3", "hwdu_cv", 4.0, None),
    ("3", "hwdu_cv", 2.25, None),
    ("3", "hwdu_cv", 11.0, None),
    ("3", "hwdu_cv", 7.8, None),
    ("4", "cerberis3", 1.4, 4.2),
    ("4", "hwdu_cv", 8.7, None),
    ("4", "hwdu_cv", 12.0, None),
    ("4", "hwdu_cv", 9.0, None),
    ("4", "hwdu_cv", 6.2, None),
    ("5", "hwdu_cv", 0.09, None),
    ("5", "toshiba", 1039.9, 3.4),
    ("6", "hwdu_cv", 8.1, None),
    ("6", "hwdu_cv", 8.4, None),
    ("6", "cerberis3", 1.5, 3.3),
    ("7", "hwdu_cv", 7.4, None),
    ("7", "toshiba", 242.3, 4.0),
    ("8", "toshiba", 37.2, 3.0),
    ("9", "toshiba", 2857.1, 2.5),
    ("3+4", "hwdu_cv", 7.1, None),
    ("3+4", "hwdu_cv", 5.2, None),
    ("2+3+4", "hwdu_cv", 0.07, None),
    ("2+3+4", "hwdu_cv", 0.01, None),
    ("R1", "ait_cv", 14.0, None),
]


def _float(text: str) -> float:
    return float(text)


# Every column of every profile, with the values a healthy simulator may serve (MIB units).
VALID: dict[str, Callable[[str], bool]] = {
    # Cerberis 3
    "cerbSerialNumber": lambda v: v.startswith("C3-"),
    "cerbFirmwareVersion": lambda v: bool(v),
    "cerbDetectorTemperature": lambda v: -5600 <= int(v) <= -4400,
    "cerbLaserTemperature": lambda v: 2300 <= int(v) <= 2700,
    "cerbLinkPeerName": lambda v: v.isascii() and bool(v),
    "cerbLinkId": lambda v: bool(v),
    "cerbLinkRole": lambda v: v in ("1", "2"),
    "cerbLinkBand": lambda v: v in ("O", "C32", "C34"),
    "cerbLinkState": lambda v: 1 <= int(v) <= 6,
    "cerbLinkQber": lambda v: 0 <= int(v) <= 1000,
    "cerbLinkVisibility": lambda v: int(v) == 0 or 8000 <= int(v) <= 10000,
    "cerbLinkSecretKeyRate": lambda v: 0 <= int(v) <= 10_000,
    "cerbLinkRawKeyRate": lambda v: 0 <= int(v) <= 100_000,
    "cerbLinkKeyStoreFill": lambda v: 0 <= int(v) <= 100,
    "cerbLinkKeyStoreKeys": lambda v: 0 <= int(v) <= 2**31 // 256,
    # Toshiba
    "tqkdSerial": lambda v: v.startswith("TQ-"),
    "tqkdDetectorTemperature": lambda v: -320 <= int(v) <= -280,
    "tqkdEnclosureTemperature": lambda v: 230 <= int(v) <= 290,
    "tqkdLinkPeer": lambda v: v.isascii() and bool(v),
    "tqkdLinkName": lambda v: bool(v),
    "tqkdLinkRole": lambda v: v in ("1", "2"),
    "tqkdLinkStatus": lambda v: 1 <= int(v) <= 5,
    "tqkdLinkQberPpm": lambda v: 0 <= int(v) <= 100_000,
    "tqkdLinkSecretBits": lambda v: int(v) > 0,
    "tqkdLinkSiftedBits": lambda v: int(v) > 0,
    "tqkdLinkKeyBufferBits": lambda v: 0 <= int(v) <= 2**31,
    "tqkdLinkKeyBufferCapacity": lambda v: 2**20 <= int(v) <= 2**31,
    "tqkdLinkWavelength": lambda v: int(v) == 1_310_000,
    # HWDU
    "hwcvLaserTemperature": lambda v: 2400 <= int(v) <= 2600,
    "hwcvReceiverTemperature": lambda v: 3000 <= int(v) <= 3300,
    "hwcvChannelPeer": lambda v: v.isascii() and bool(v),
    "hwcvChannelLink": lambda v: bool(v),
    "hwcvChannelDirection": lambda v: v in ("1", "2"),
    "hwcvChannelItu": lambda v: int(v) in (34, 37, 38),
    "hwcvChannelSwitched": lambda v: v in ("1", "2"),
    "hwcvChannelState": lambda v: 1 <= int(v) <= 5,
    "hwcvChannelExcessNoise": lambda v: 0 <= int(v) <= 40_000,
    "hwcvChannelSnr": lambda v: int(v) == -3000 or -2100 <= int(v) <= 500,
    "hwcvChannelLoss": lambda v: 100 <= int(v) <= 2400,
    "hwcvChannelSecretKeyRate": lambda v: 0 <= int(v) <= 40_000,
    "hwcvChannelKeyPoolBits": lambda v: 0 <= int(v) <= 2**31,
    "hwcvChannelKeyPoolCapacity": lambda v: 2**20 <= int(v) <= 2**31,
    # AIT
    "aitcvBoardTemperature": lambda v: 39.0 <= _float(v) <= 44.0,
    "aitcvLinkPeer": lambda v: v.isascii() and bool(v),
    "aitcvLinkId": lambda v: bool(v),
    "aitcvLinkMode": lambda v: v in ("1", "2"),
    "aitcvLinkOperStatus": lambda v: v in ("1", "2", "3"),
    "aitcvLinkExcessNoise": lambda v: 0.0 <= _float(v) <= 0.05,
    "aitcvLinkSnrDb": lambda v: -30.0 <= _float(v) <= 5.0,
    "aitcvLinkTransmittance": lambda v: 0.0 < _float(v) < 1.0,
    "aitcvLinkSecretKeyRate": lambda v: 0 <= int(v) <= 40_000,
    "aitcvLinkKeyStoreFill": lambda v: 0 <= int(v) <= 1000,
}


@pytest.fixture(scope="module")
def builder():
    return mib_builder()


def oid_of(builder, profile: str, name: str, *index: int) -> str:
    (obj,) = builder.import_symbols(PROFILES[profile].module, name)
    return ".".join(map(str, (*obj.name, *index)))


def names_by_oid(builder, profile: str) -> dict[str, str]:
    p = PROFILES[profile]
    return {oid_of(builder, profile, n): n for n in (*p.scalars, *p.columns)}


def net_snmp(
    tool: str,
    address: str,
    *oids: str,
    v3: tuple[str, str, str] | None = None,
    options: tuple[str, ...] = (),
):
    """Run a Net-SNMP tool; -On -Oqe: numeric OIDs, `OID value` lines, enums as numbers."""
    if v3 is None:
        auth = ["-v2c", "-c", "public"]
    else:
        user, auth_key, priv_key = v3
        auth = ["-v3", "-l", "authPriv", "-u", user, "-a", "SHA-256", "-A", auth_key]
        auth += ["-x", "AES", "-X", priv_key]
    return subprocess.run(
        [tool, *auth, "-On", "-Oqe", "-t", "2", "-r", "1", *options, address, *oids],
        capture_output=True,
        text=True,
        timeout=60,
    )


def snmpget(address: str, *oids: str) -> list[str]:
    """Values of `oids` (strings unquoted)."""
    result = subprocess.run(
        ["snmpget", "-v2c", "-c", "public", "-On", "-Oqve", "-t", "2", address, *oids],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return [line.strip().strip('"') for line in result.stdout.splitlines()]


def parse_walk(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        oid, _, value = line.partition(" ")
        out[oid.lstrip(".")] = value.strip().strip('"')
    return out


def check_table(builder, profile: str, values: dict[str, str], rows: int) -> None:
    """Every scalar and every column of every row is there, each with a plausible value."""
    p = PROFILES[profile]
    expected = {oid_of(builder, profile, s, 0): s for s in p.scalars}
    for column in p.columns:
        for index in range(1, rows + 1):
            expected[oid_of(builder, profile, column, index)] = column
    assert set(values) == set(expected)
    for oid, value in values.items():
        assert VALID[expected[oid]](value), (expected[oid], oid, value)


# ---- walking the agents ---------------------------------------------------------------------


def test_bulkwalk_of_every_twin_agent_returns_its_whole_link_table(snmp_sims, builder):
    topology = snmp_sims.network.topology
    for name, info in snmp_sims.agents.items():
        result = net_snmp("snmpbulkwalk", info.address, "1.3.6.1.4.1.32473.42", options=("-Cr25",))
        assert (result.returncode, result.stderr) == (0, ""), name
        check_table(builder, info.profile, parse_walk(result.stdout), len(topology.rows(name)))


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_snmpwalk_v2c_and_v3_authpriv_see_the_same_table(profile, snmp_sims, builder):
    (name, info) = next((n, i) for n, i in snmp_sims.agents.items() if i.profile == profile)
    rows = len(snmp_sims.network.topology.rows(name))
    creds = info.credentials
    v2 = net_snmp("snmpwalk", info.address, "1.3.6.1.4.1.32473.42")
    v3 = net_snmp(
        "snmpwalk",
        info.address,
        "1.3.6.1.4.1.32473.42",
        v3=(creds.user, creds.auth_key, creds.priv_key),
    )
    for result in (v2, v3):
        assert (result.returncode, result.stderr) == (0, "")
        check_table(builder, profile, parse_walk(result.stdout), rows)
    assert set(parse_walk(v2.stdout)) == set(parse_walk(v3.stdout))


def test_a_wrong_v3_key_is_refused(snmp_sims):
    info = snmp_sims.agents["tsb-quevedo"]
    wrong = net_snmp(
        "snmpget", info.address, "1.3.6.1.2.1.1.5.0", v3=("qkdtel", "not-the-key", "x" * 8)
    )
    assert wrong.returncode != 0
    assert "Authentication failure" in wrong.stderr


def test_agents_identify_themselves(snmp_sims, builder):
    info = snmp_sims.agents["hwdu-norte-l4"]
    descr, object_id, name, location = snmpget(
        info.address,
        "1.3.6.1.2.1.1.1.0",
        "1.3.6.1.2.1.1.2.0",
        "1.3.6.1.2.1.1.5.0",
        "1.3.6.1.2.1.1.6.0",
    )
    assert "HWDU" in descr and "not vendor-published" in descr
    (identity,) = builder.import_symbols("QKDTEL-HWDU-CVQKD-MIB", "hwcvMIB")
    assert object_id == "." + ".".join(map(str, identity.name))
    assert (name, location) == ("hwdu-norte-l4", "Norte")


def test_the_generated_collector_configs_validate(snmp_sims):
    for path, version in ((snmp_sims.config_path, "2c"), (snmp_sims.config_path_v3, "3")):
        loaded = load_config(path)
        assert len(loaded.devices) == 28
        options = {d.config.name: d.options for d in loaded.devices}
        assert options["tsb-quevedo"].snmp.version == version
        assert options["tsb-quevedo"].address == snmp_sims.agents["tsb-quevedo"].address
        (traps,) = loaded.listeners
        assert (traps.type, traps.options.listen) == (
            "snmp_traps",
            f"127.0.0.1:{snmp_sims.trap_target[1]}",
        )
        tags = {d.config.name: d.config.tags for d in loaded.devices}
        assert tags["idq-norte-l4"] == {"node": "Norte", "domain": "TID"}


# ---- values served are the model's ---------------------------------------------------------


def _producing_time(agent, after: float = 0.0) -> float:
    """A simulated instant at which every row of `agent` produces key."""
    t = after
    while not all(row.channel.schedule.at(t)[0] is Phase.PRODUCING for row in agent.rows):
        t += 600.0
    return t


def test_cv_values_served_match_the_model_down_to_minus_19_5_db(single_agent, builder):
    clock = ManualClock()
    sim = single_agent("hwdu_cv", clock=clock)
    clock.set(_producing_time(sim.agent, 3 * DAY))
    rows = {row.facts.link + f"/{row.facts.itu}/{row.facts.role}": row for row in sim.agent.rows}
    far = rows["2+3+4/37/bob"]
    snr, loss, switched, rate = snmpget(
        sim.address,
        *(
            oid_of(builder, "hwdu_cv", column, far.facts.index)
            for column in (
                "hwcvChannelSnr",
                "hwcvChannelLoss",
                "hwcvChannelSwitched",
                "hwcvChannelSecretKeyRate",
            )
        ),
    )
    reading = far.channel.reading(clock.now())
    assert int(snr) == round(reading.snr_db * 100)
    assert -2000 <= int(snr) <= -1900  # the published floor: -19.5 dB at ~22.5 dB loss
    assert int(loss) == round(reading.loss_db * 100)
    assert switched == "1"
    assert int(rate) == round(reading.secret_key_rate_bps)


def test_ait_reports_decimal_text(single_agent, builder):
    clock = ManualClock()
    sim = single_agent("ait_cv", clock=clock)
    clock.set(_producing_time(sim.agent, DAY))
    noise, snr, transmittance = snmpget(
        sim.address,
        *(
            oid_of(builder, "ait_cv", c, 1)
            for c in ("aitcvLinkExcessNoise", "aitcvLinkSnrDb", "aitcvLinkTransmittance")
        ),
    )
    reading = sim.agent.rows[0].channel.reading(clock.now())
    assert noise == f"{reading.excess_noise_snu:.4f}"
    assert snr == f"{reading.snr_db:.2f}"
    assert float(transmittance) == pytest.approx(10 ** (-5.5 / 10), rel=0.05)


def test_maintenance_stops_key_then_the_link_restarts(single_agent, builder):
    clock = ManualClock()
    sim = single_agent("cerberis3", clock=clock)
    schedule = sim.agent.rows[0].channel.schedule
    start = next(t for t in range(0, 8 * 86_400, 60) if schedule.at(t)[0] is Phase.MAINTENANCE)
    state, rate = (
        oid_of(builder, "cerberis3", c, 1) for c in ("cerbLinkState", "cerbLinkSecretKeyRate")
    )
    clock.set(start + 60)
    assert snmpget(sim.address, state, rate) == ["6", "0"]  # maintenance(6)
    clock.set(start + schedule.duration + 10)
    assert snmpget(sim.address, state, rate) == ["2", "0"]  # initializing(2)
    clock.set(start + schedule.duration + schedule.restart + 10)
    produced_state, produced_rate = snmpget(sim.address, state, rate)
    assert produced_state == "4" and int(produced_rate) > 0  # producingKey(4)


def test_toshiba_secret_bits_count_up_at_the_published_rate(single_agent, builder):
    """Link 9: 2857.1 kbit/s long-run, read from the Counter64 over two simulated weeks."""
    clock = ManualClock()
    sim = single_agent("toshiba", clock=clock)
    row = next(r for r in sim.agent.rows if r.facts.link == "9")
    counter = oid_of(builder, "toshiba", "tqkdLinkSecretBits", row.facts.index)
    (before,) = snmpget(sim.address, counter)
    readings = []
    for day in range(1, 15):
        clock.set(day * DAY)
        readings.append(int(snmpget(sim.address, counter)[0]))
    assert readings == sorted(readings) and readings[0] > int(before)
    rate = (readings[-1] - int(before)) / (14 * DAY)
    assert rate == pytest.approx(2_857_100, rel=0.03)


def test_accelerated_counters_only_go_up(snmp_sims, builder):
    """Both rows of the Norte hub summed: their weekly maintenance windows never overlap."""
    info = snmp_sims.agents["tsb-norte"]
    oids = [oid_of(builder, "toshiba", "tqkdLinkSecretBits", i) for i in (1, 2)]
    totals = []
    for _ in range(3):
        totals.append(sum(int(v) for v in snmpget(info.address, *oids)))
        time.sleep(0.1)
    assert totals[0] < totals[1] < totals[2]


# ---- behaviour over simulated time (the models directly: weeks in a second) ----------------


@pytest.fixture
def twin(madqci_topology):
    """The twin's models without any socket: for statistics over simulated weeks."""
    return SimNetwork(madqci_topology, seed=7)


def _channel(network, link: str, profile: str, skr_kbps: float):
    topology = network.topology
    for i, channel in enumerate(topology.channels):
        if (channel.link, topology.module(channel.alice).profile, channel.skr_kbps) == (
            link,
            profile,
            skr_kbps,
        ):
            return network.channels[i]
    raise LookupError(link)


@pytest.mark.parametrize(
    ("link", "profile", "skr_kbps", "qber_percent"),
    [
        ("4", "cerberis3", 1.4, 4.2),
        ("3", "cerberis3", 2.04, 2.2),
        ("9", "toshiba", 2857.1, 2.5),
        ("4", "hwdu_cv", 12.0, None),
        ("R1", "ait_cv", 14.0, None),
    ],
)
def test_long_run_means_match_the_published_table(twin, link, profile, skr_kbps, qber_percent):
    model = _channel(twin, link, profile, skr_kbps)
    readings = [model.reading(t) for t in range(0, int(28 * DAY), 600)]
    mean_skr = statistics.fmean(r.secret_key_rate_bps for r in readings)
    assert mean_skr == pytest.approx(skr_kbps * 1000, rel=0.03)
    producing = [r for r in readings if r.producing]
    assert 0.97 < len(producing) / len(readings) < 0.995  # weekly maintenance gaps
    if qber_percent is not None:
        mean_qber = statistics.fmean(r.qber for r in producing)
        assert mean_qber == pytest.approx(qber_percent / 100, rel=0.03)
    assert statistics.pstdev(r.secret_key_rate_bps for r in producing) > 0.05 * mean_skr


def test_cerberis_key_rate_falls_and_qber_rises_with_detector_temperature(twin):
    model = _channel(twin, "4", "cerberis3", 1.4)
    bob = twin.modules["idq-norte-l4"]
    samples = [
        (bob.temperature(t, -50.0, 2.5), r.qber, r.secret_key_rate_bps)
        for t in range(0, int(4 * DAY), 900)
        if (r := model.reading(t)).producing
    ]
    temperature, qber, rate = zip(*samples, strict=True)
    assert max(temperature) - min(temperature) > 2.0  # real excursions, not a flat line
    assert statistics.correlation(temperature, qber) > 0.6
    assert statistics.correlation(temperature, rate) < -0.6


def test_key_rate_falls_with_channel_loss(madqci_topology):
    """3 dB more loss halves a DV key rate and quarters a CV one (same seed, same noise)."""
    for link, profile, skr, expected in (
        ("9", "toshiba", 2857.1, 0.5),
        ("1", "hwdu_cv", 3.3, 0.25),
    ):
        base = _channel(SimNetwork(madqci_topology, seed=3), link, profile, skr)
        lossy = _channel(SimNetwork(madqci_topology, seed=3), link, profile, skr)
        lossy.extra_loss_db = 3.0
        times = range(0, int(2 * DAY), 600)
        ratio = sum(lossy.reading(t).secret_key_rate_bps for t in times) / sum(
            base.reading(t).secret_key_rate_bps for t in times
        )
        assert ratio == pytest.approx(expected, rel=0.06), link


def test_key_store_fills_and_runs_empty_during_maintenance(madqci_topology):
    network = SimNetwork(madqci_topology, seed=0)
    model = _channel(network, "4", "cerberis3", 1.4)
    fills, empty_phases, empties = [], [], 0
    for t in range(0, int(28 * DAY), 300):
        reading = model.reading(t)
        fills.append(reading.store_bits / reading.store_capacity_bits)
        if reading.store_empty_count > empties:
            empties = reading.store_empty_count
            empty_phases.append(reading.phase)
    assert max(fills) == 1.0  # full at times...
    assert sum(0.05 < f < 0.95 for f in fills) > len(fills) / 10  # ...and on the move for days
    assert 1 <= empties <= 10
    assert Phase.MAINTENANCE in empty_phases  # two hours without key drain the store


def test_the_same_seed_replays_the_same_network(madqci_topology):
    def sample(seed: int) -> list[float]:
        network = SimNetwork(madqci_topology, seed=seed)
        return [network.channels[i].reading(12_345.0).secret_key_rate_bps for i in range(5)]

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


# ---- notifications -------------------------------------------------------------------------


def _decode_trap(datagram: bytes) -> tuple[str, dict[str, str]]:
    version = int(api.decodeMessageVersion(datagram))
    module = api.PROTOCOL_MODULES[version]
    message, _ = decoder.decode(datagram, asn1Spec=module.Message())
    pdu = module.apiMessage.get_pdu(message)
    varbinds = {str(oid): value.prettyPrint() for oid, value in module.apiTrapPDU.get_varbinds(pdu)}
    return str(module.apiMessage.get_community(message)), varbinds


def _first_maintenance_and_empty(model, horizon: float = 28 * DAY) -> tuple[float, float]:
    """Simulated times of the first maintenance start and the first empty key store."""
    maintenance = empty = None
    t = 0.0
    while maintenance is None or empty is None:
        reading = model.reading(t)
        if maintenance is None and reading.phase is Phase.MAINTENANCE:
            maintenance = t
        if empty is None and reading.store_empty_count > 0:
            empty = t
        t += 60.0
        assert t < horizon, "the events never happen in the horizon"
    return maintenance, empty


def test_traps_carry_the_mib_objects_and_decode_with_pysnmp(single_agent, builder, madqci_topology):
    """Link down (maintenance), key store empty and QBER alarm of the link-4 Cerberis."""
    # Where the events fall for seed 0, from a socket-less copy of the same model.
    probe = SimNetwork(madqci_topology, seed=0).agents["idq-quevedo-l4"].rows[0].channel
    maintenance, empty = _first_maintenance_and_empty(probe)
    assert maintenance < empty
    oid = functools.partial(oid_of, builder, "cerberis3")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        clock = ManualClock()
        sim = single_agent("cerberis3", clock=clock, trap_target=receiver.getsockname())

        def next_trap() -> dict[str, str]:
            datagram, source = receiver.recvfrom(65535)
            community, varbinds = _decode_trap(datagram)
            assert (community, source[1]) == ("public", sim.port)  # from the agent's port
            return varbinds

        clock.set(maintenance + 60)
        down = next_trap()
        assert down[SNMPTRAPOID] == oid("cerbLinkDown")
        assert down[oid("cerbLinkPeerName", 1)] == "Norte"
        assert down[oid("cerbLinkId", 1)] == "4"
        assert down[oid("cerbLinkState", 1)] == "6"  # maintenance(6)

        clock.set(empty + 120)
        drained = next_trap()
        assert drained[SNMPTRAPOID] == oid("cerbKeyStoreEmpty")
        store = sim.agent.rows[0].channel.reading(clock.now())
        keys = int(drained[oid("cerbLinkKeyStoreKeys", 1)])
        assert keys == int(store.store_bits // 256)  # the level when the trap left
        assert keys * 256 < 0.05 * store.store_capacity_bits

        clock.set(_producing_time(sim.agent, empty + DAY))
        channel = sim.agent.rows[0].channel
        sim.background.call(lambda: setattr(channel, "extra_loss_db", 10.0))  # QBER +2 points
        alarm = next_trap()
        assert alarm[SNMPTRAPOID] == oid("cerbQberThresholdAlarm")
        assert int(alarm[oid("cerbLinkQber", 1)]) >= 500
    deadline = time.monotonic() + 5  # the agent logs a trap once its send completes
    while len(sim.agent.sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [n.name for n in sim.agent.sent] == [
        "cerbLinkDown",
        "cerbKeyStoreEmpty",
        "cerbQberThresholdAlarm",
    ]


@pytest.mark.parametrize("version", ["2c", "3"])
def test_link_down_trap_reaches_snmptrapd(
    version, single_agent, builder, netsnmp_mibdirs, tmp_path
):
    port = free_udp_port()
    conf = tmp_path / "snmptrapd.conf"
    # v3: the agent is the authoritative engine of its traps, so the user is keyed to its ID
    user = Credentials()
    conf.write_text(
        f"createUser -e 0x{engine_id('tsb-quevedo').hex()} {user.user} SHA-256 {user.auth_key}"
        f" AES {user.priv_key}\nauthUser log {user.user} priv\n"
        if version == "3"
        else f"authCommunity log {user.community}\n"
    )
    trapd = subprocess.Popen(
        [
            "snmptrapd",
            "-f",
            "-Lo",
            "-C",
            "-c",
            str(conf),
            "-n",
            "-On",
            "-M",
            netsnmp_mibdirs,
            "-m",
            "QKDTEL-TOSHIBA-QKD-MIB",
            f"udp:127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(trapd.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while not any("NET-SNMP version" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        clock = ManualClock()
        sim = single_agent(
            "toshiba", clock=clock, trap_target=("127.0.0.1", port), trap_version=version
        )
        row = sim.agent.rows[0]
        t = _producing_time(sim.agent, DAY)
        clock.set(t)
        time.sleep(0.3)
        while row.channel.schedule.at(t)[0] is not Phase.MAINTENANCE:
            t += 60
        clock.set(t + 60)
        notification = oid_of(builder, "toshiba", "tqkdLinkStatusChange")
        deadline = time.monotonic() + 10
        while not any(notification in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
    finally:
        trapd.terminate()
        trapd.wait(10)
    reader.join(5)
    text = "".join(lines)
    status = oid_of(builder, "toshiba", "tqkdLinkStatus", row.facts.index)
    assert f"{status} = INTEGER: serviceMode(5)" in text
    assert f"UDP: [127.0.0.1]:{sim.port}->" in text


# ---- fault knobs ---------------------------------------------------------------------------


def test_an_unresponsive_agent_times_out_until_it_recovers(single_agent):
    sim = single_agent("ait_cv", unresponsive=True)
    silent = subprocess.run(
        [
            "snmpget",
            "-v2c",
            "-c",
            "public",
            "-t",
            "0.3",
            "-r",
            "0",
            sim.address,
            "1.3.6.1.2.1.1.5.0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert silent.returncode != 0 and "Timeout" in silent.stderr
    sim.set_unresponsive(False)
    assert snmpget(sim.address, "1.3.6.1.2.1.1.5.0") == ["ait-montegancedo"]


def test_a_missing_column_answers_no_such_object(single_agent, builder):
    sim = single_agent("toshiba", missing=["tqkdLinkWavelength"])
    wavelength = oid_of(builder, "toshiba", "tqkdLinkWavelength", 1)
    peer = oid_of(builder, "toshiba", "tqkdLinkPeer", 1)
    result = net_snmp("snmpget", sim.address, wavelength, peer)
    assert f".{wavelength} No Such Object available on this agent at this OID" in result.stdout
    assert f'.{peer} "Quijano"' in result.stdout
    walk = parse_walk(net_snmp("snmpwalk", sim.address, "1.3.6.1.4.1.32473.42").stdout)
    assert not any(oid.startswith(wavelength.rsplit(".", 1)[0] + ".") for oid in walk)
    assert peer in walk


# ---- the topology file ---------------------------------------------------------------------


def test_the_twin_has_the_published_shape(madqci_topology):
    t = madqci_topology
    production = [s for s in t.sites if s.domain != "remote"]
    assert len(production) == 9
    assert {s.name for s in production if not s.invented} == {
        "Quijote",
        "Quevedo",
        "Quintin",
        "Quijano",
        "Norte",
        "Concepcion",
        "Distrito",
    }
    remote = {s.name for s in t.sites if s.domain == "remote"}
    assert len(t.modules) == 28
    assert sum(t.module(m.name).site not in remote for m in t.modules) == 26
    fibre = [link for link in t.links if link.a not in remote]
    assert len(fibre) == 9 and sum(link.length_km for link in fibre) > 130
    assert (
        min(link.length_km for link in fibre) == 1.9
        and max(link.length_km for link in fibre) == 33.1
    )
    assert (
        min(link.loss_db for link in fibre) == 2.0 and max(link.loss_db for link in fibre) == 14.3
    )
    link8 = next(link for link in t.links if link.id == "8")
    assert (link8.a, link8.b, link8.length_km, link8.loss_db) == ("Quijano", "Quevedo", 33.1, 11.8)
    border = {t.module(c.alice).profile for c in t.channels if c.link == "4"}
    assert border == {"cerberis3", "hwdu_cv"}  # one DV and one CV vendor on the border link
    served = sorted(
        (c.link, t.module(c.alice).profile, c.skr_kbps, c.qber_percent) for c in t.channels
    )
    assert served == sorted(PUBLISHED)


BAD_TOPOLOGY = """
name: broken
sites: [{name: A, domain: X}, {name: B, domain: X}, {name: C, domain: X}]
links:
  - {id: "1", a: A, b: B, length_km: 1, loss_db: 1}
  - {id: "2", a: A, b: C, length_km: 1, loss_db: 1}
  - {id: "3", a: A, b: Z, length_km: 1, loss_db: 1}
modules:
  - {name: q1, site: A, profile: toshiba}
  - {name: q2, site: B, profile: toshiba}
  - {name: c1, site: A, profile: hwdu_cv}
  - {name: c2, site: C, profile: hwdu_cv}
  - {name: idle, site: C, profile: cerberis3}
channels:
  - {link: "1", alice: q1, bob: q2, band: C, itu: 34, skr_kbps: 1}
  - {link: "1", alice: c1, bob: c2, band: C, itu: 40, skr_kbps: 1, qber_percent: 2}
  - {link: "1+2", alice: q1, bob: nobody, band: O, skr_kbps: 1, qber_percent: 2}
"""


def test_an_invalid_topology_lists_every_problem():
    with pytest.raises(TopologyError) as info:
        parse_topology(BAD_TOPOLOGY, "broken.yaml")
    problems = info.value.problems
    expected = [
        "links[2] (3): no site named 'Z'",
        "toshiba is discrete-variable: give qber_percent",
        "toshiba cannot use ITU channel 34",
        "hwdu_cv is continuous-variable: no qber_percent",
        "hwdu_cv cannot use ITU channel 40 (allowed: 34, 37, 38)",
        "links 1 do not run from A to C",
        "bob: no module named 'nobody'",
        "module 'idle' serves no channel",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert str(info.value).startswith("broken.yaml: invalid topology")


# ---- `sims up` -----------------------------------------------------------------------------


def test_sims_up_runs_in_a_child_process_and_writes_a_valid_config(tmp_path):
    args = ["--only", "idq-quevedo-l4", "--only", "tsb-quevedo", "--speed", "100", "--v3"]
    args += ["--trap-target", "127.0.0.1:10162", "--trap-version", "3"]
    with SimsProcess(tmp_path / "sims.yaml", args) as sims:
        loaded = load_config(sims.config_path)  # the real loader, with the qkd_snmp driver
        assert [d.config.name for d in loaded.devices] == ["idq-quevedo-l4", "tsb-quevedo"]
        (traps,) = loaded.listeners
        assert traps.options.listen == "127.0.0.1:10162"
        assert [u.user for u in traps.options.users] == ["qkdtel"]
        device = sims.devices["tsb-quevedo"]
        assert device["snmp"]["auth_protocol"] == "sha256" and device["profile"] == "toshiba"
        result = net_snmp(
            "snmpget",
            device["address"],
            "1.3.6.1.2.1.1.5.0",
            v3=(device["snmp"]["user"], device["snmp"]["auth_key"], device["snmp"]["priv_key"]),
        )
        assert result.stdout.strip().endswith('"tsb-quevedo"'), result.stderr
        assert "tsb-quevedo" in Path(sims.log_path).read_text()
    assert sims.stop() is None  # already stopped by the context manager
    assert not (tmp_path / "sims.yaml").with_suffix(".tmp").exists()


def test_sims_up_exits_cleanly_on_sigterm(tmp_path):
    sims = SimsProcess(tmp_path / "one.yaml", ["--only", "ait-moncloa"]).start()
    assert sims.stop() == 0


def test_sims_up_refuses_a_bad_topology(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_TOPOLOGY)
    assert sims_main(["up", "-t", str(bad)]) == 2
    assert "no site named 'Z'" in capsys.readouterr().err
    assert sims_main(["up", "--only", "no-such-module"]) == 2

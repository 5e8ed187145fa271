"""The qkd_snmp driver against real SNMP agents: the simulated QKD modules (pysnmp agents on
loopback), or under `--hil lab.yaml` the lab's modules for the tests taking `qkd_target`.

Fault tests use the simulators' own knobs (silent agent, objects the firmware lacks), a closed
port, a UDP relay that loses or counts datagrams, and agents started with a vendor profile
whose column reports junk; every exchange is real SNMP over UDP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from pyasn1.codec.ber import decoder
from pysnmp.proto import api

from qkdtel.config import ConfigError, load_config_text
from qkdtel.drivers.qkd_snmp import QkdSnmpDriver
from qkdtel.drivers.qkd_snmp.options import QkdSnmpOptions
from qkdtel.drivers.qkd_snmp.resolve import resolve
from qkdtel.sdk import (
    AuthError,
    DeviceTimeout,
    Malformed,
    PartialPoll,
    PollError,
    Refused,
    Sample,
)
from qkdtel.sims.clock import ManualClock
from qkdtel.sims.snmp.agent import Credentials
from qkdtel.sims.snmp.network import BackgroundNetwork, SimNetwork
from qkdtel.sims.snmp.profiles import PROFILES as SIM_PROFILES
from tests.fixtures_hil import QkdTarget, driver_options
from tests.fixtures_snmp import REPRESENTATIVE, free_udp_port, require_tools

STATUSES = {"active", "pending", "off", "failure"}
FAMILY_TAGS = {
    "cerberis3": {"vendor": "idq", "technology": "dv", "protocol": "cow"},
    "toshiba": {"vendor": "toshiba", "technology": "dv", "protocol": "bb84_decoy"},
    "hwdu_cv": {"vendor": "hwdu", "technology": "cv", "protocol": "gg02"},
    "ait_cv": {"vendor": "ait", "technology": "cv", "protocol": "qpsk"},
}


def poll(driver: QkdSnmpDriver, times: int = 1, pause: float = 0.0) -> list[list[Sample]]:
    """Poll `times` times on a fresh event loop, then close the driver."""

    async def main() -> list[list[Sample]]:
        try:
            out = []
            for i in range(times):
                if i:
                    await asyncio.sleep(pause)
                out.append(await driver.poll())
            return out
        finally:
            await driver.aclose()

    return asyncio.run(main())


def poll_error(driver: QkdSnmpDriver) -> tuple[PollError, float]:
    """The error one poll ends in, and how long it took."""
    started = time.monotonic()
    with pytest.raises(PollError) as info:
        poll(driver)
    return info.value, time.monotonic() - started


def make_driver(device: dict[str, Any], **snmp: Any) -> QkdSnmpDriver:
    """A driver for a collector `devices:` entry, with SNMP settings overridden."""
    entry = {**device, "snmp": {**device["snmp"], **snmp}}
    return QkdSnmpDriver(entry["name"], driver_options(entry), timeout=10.0)


def split(samples: list[Sample]) -> tuple[list[Sample], Sample]:
    links = [s for s in samples if s.measurement == "qkd_link"]
    (module,) = [s for s in samples if s.measurement == "qkd_module"]
    assert len(links) + 1 == len(samples)
    return links, module


# ---- on every target: simulators, or the lab's modules under --hil ----------------------------


def test_poll_is_normalised_and_in_range(qkd_target: QkdTarget):
    first, second = poll(qkd_target.driver(), times=2, pause=0.3)
    links, module = split(second)
    family = FAMILY_TAGS[qkd_target.options.profile]

    assert links, "a QKD module reports at least one link"
    assert module.tags == {"vendor": family["vendor"], "technology": family["technology"]}
    assert module.fields["links"] == len(links)
    generating = sum(link.fields["key_generating"] for link in links)
    assert module.fields["links_generating"] == generating
    for name, value in module.fields.items():
        if name.endswith("_temperature_c"):
            assert -80 <= value <= 80, (name, value)

    for link in links:
        tags, fields = link.tags, link.fields
        assert {k: tags[k] for k in family} == family
        assert tags["direction"] in {"tx", "rx"}
        assert tags.get("band", "O") in {"O", "C"}
        assert fields["link_status"] in STATUSES
        assert fields["key_generating"] is (fields["link_status"] == "active")
        assert isinstance(fields["vendor_state"], str) and fields["vendor_state"]
        if "key_store_fill_ratio" in fields:
            assert 0.0 <= fields["key_store_fill_ratio"] <= 1.0
        if family["technology"] == "dv":
            assert 0.0 <= fields["qber"] <= 0.2  # a fraction, not a percentage
            assert "excess_noise_snu" not in fields
        else:
            assert 0.0 <= fields["excess_noise_snu"] < 0.5  # SNU, not mSNU
            assert -30.0 <= fields["snr_db"] <= 30.0
            assert "qber" not in fields

    if qkd_target.options.profile == "toshiba":
        before = {s.tags["link"]: s.fields for s in split(first)[0]}
        for link in links:
            assert "secret_key_rate_bps" not in before[link.tags["link"]]  # first poll: total only
            grew = (
                link.fields["secret_key_bits_total"]
                >= before[link.tags["link"]]["secret_key_bits_total"]
            )
            assert ("secret_key_rate_bps" in link.fields) is grew


def test_one_engine_and_socket_for_every_poll(qkd_target: QkdTarget):
    driver = qkd_target.driver()

    async def main() -> list[int]:
        counts = []
        try:
            for _ in range(6):
                await driver.poll()
                counts.append(len(os.listdir("/proc/self/fd")))
        finally:
            await driver.aclose()
        return counts

    counts = asyncio.run(main())
    assert len(set(counts)) == 1, counts


# ---- normalisation against the simulators' ground truth ----------------------------------------


def frozen_agent(single_agent: Callable, profile: str, **kwargs: Any):
    """A simulated module whose time stands still, so the test reads what the driver read."""
    return single_agent(profile, clock=ManualClock(start=5000.0), **kwargs)


@pytest.mark.parametrize("profile", sorted(FAMILY_TAGS))
def test_values_are_the_simulated_quantities_in_metrics_units(single_agent, profile):
    sim = frozen_agent(single_agent, profile)
    ((*links, module),) = poll(make_driver(sim.device))
    t = sim.clock.now()
    by_row = {link.tags["link"] + link.tags["direction"] + link.tags.get("channel", ""): link
              for link in links}  # fmt: skip
    assert len(by_row) == len(sim.agent.rows)
    for row in sim.agent.rows:
        facts, reading = row.facts, row.channel.reading(t)
        direction = "tx" if facts.role == "alice" else "rx"
        reports_channel = profile in ("cerberis3", "hwdu_cv") and facts.band == "C"
        channel = str(facts.itu) if reports_channel else ""
        link = by_row[facts.link + direction + channel]
        assert link.tags["peer"] == facts.peer
        fields = link.fields
        if profile in ("cerberis3", "toshiba"):
            assert fields["qber"] == pytest.approx(reading.qber, abs=1e-4)
        if profile == "cerberis3":
            assert fields["visibility"] == pytest.approx(reading.visibility, abs=1e-4)
            assert fields["key_store_bits"] == int(reading.store_bits // 256) * 256
        if profile == "toshiba":
            assert fields["secret_key_bits_total"] == reading.secret_bits_total
            assert fields["wavelength_nm"] == 1310.0
            assert link.tags["band"] == "O"
        if profile in ("hwdu_cv", "ait_cv"):
            assert fields["excess_noise_snu"] == pytest.approx(reading.excess_noise_snu, abs=1e-4)
            assert fields["snr_db"] == pytest.approx(reading.snr_db, abs=0.01)
        if profile == "hwdu_cv":
            assert fields["channel_loss_db"] == pytest.approx(reading.loss_db, abs=0.01)
            assert link.tags["switched"] == str(facts.switched).lower()
            assert fields["wavelength_nm"] == pytest.approx(299792.458 / (190 + 0.1 * facts.itu))
        if profile == "ait_cv":
            assert fields["transmittance"] == pytest.approx(reading.transmittance, abs=1e-4)
        if "secret_key_rate_bps" in fields and profile != "toshiba":
            assert fields["secret_key_rate_bps"] == round(reading.secret_key_rate_bps)
    assert module.fields["links"] == len(sim.agent.rows)


def test_hwdu_snr_below_minus_19_db_is_kept_negative(single_agent):
    sim = frozen_agent(single_agent, "hwdu_cv")
    ((*links, _),) = poll(make_driver(sim.device))
    assert min(link.fields["snr_db"] for link in links) < -19.0


def sim_snmp_settings(version: str) -> dict[str, Any]:
    """The simulators' credentials as a device's `snmp:` section."""
    creds = Credentials()
    if version == "2c":
        return {"version": "2c", "community": creds.community}
    snmp = dict(version="3", user=creds.user, auth_protocol="sha256", auth_key=creds.auth_key)
    return snmp | dict(priv_protocol="aes", priv_key=creds.priv_key)


def test_toshiba_rate_comes_from_counter_differences_and_skips_a_reset(single_agent):
    clock = ManualClock(start=5000.0)
    sim = single_agent("toshiba", clock=clock)
    driver = make_driver(sim.device)

    async def main() -> tuple[list[list[Sample]], float, float]:
        try:
            before_first = time.monotonic()
            first = await driver.poll()
            after_first = time.monotonic()
            clock.advance(60.0)
            await asyncio.sleep(0.5)
            before_second = time.monotonic()
            second = await driver.poll()
            after_second = time.monotonic()
        finally:
            await driver.aclose()
        # The driver timed its two readings somewhere within these bounds.
        return [first, second], before_second - after_first, after_second - before_first

    (first, second), inner, outer = asyncio.run(main())
    for old, new in zip(split(first)[0], split(second)[0], strict=True):
        assert "secret_key_rate_bps" not in old.fields
        gained = new.fields["secret_key_bits_total"] - old.fields["secret_key_bits_total"]
        assert gained > 0
        assert gained / outer <= new.fields["secret_key_rate_bps"] <= gained / inner
        assert new.fields["sifted_key_rate_bps"] > new.fields["secret_key_rate_bps"]


@pytest.mark.parametrize("version", ["2c", "3"])
def test_counter_reset_by_a_module_restart_gives_no_rate_that_poll(madqci_topology, version):
    """Also: over SNMPv3 the driver follows the restarted agent's new engine boots/time."""
    name, port = REPRESENTATIVE["toshiba"], free_udp_port()

    def start(at: float) -> BackgroundNetwork:
        network = SimNetwork(
            madqci_topology, clock=ManualClock(start=at), only=[name], base_port=port
        )
        return BackgroundNetwork(network).start()

    options = QkdSnmpOptions(
        address=f"127.0.0.1:{port}", profile="toshiba", snmp=sim_snmp_settings(version)
    )
    driver = QkdSnmpDriver(name, options, timeout=10.0)

    async def main() -> list[list[Sample]]:
        polls = []
        sim = start(at=90_000.0)
        try:
            polls.append(await driver.poll())
        finally:
            sim.stop()
        sim = start(at=1000.0)  # restarted: its counters begin again, far below
        try:
            polls.append(await driver.poll())
            sim.network.clock.advance(30.0)
            polls.append(await driver.poll())
        finally:
            sim.stop()
            await driver.aclose()
        return polls

    before, restarted, after = (split(p)[0] for p in asyncio.run(main()))
    for old, new, later in zip(before, restarted, after, strict=True):
        assert new.fields["secret_key_bits_total"] < old.fields["secret_key_bits_total"]
        assert "secret_key_rate_bps" not in new.fields
        assert later.fields["secret_key_rate_bps"] > 0


# ---- interoperability: Net-SNMP's agent -------------------------------------------------------

NETSNMP_AUTH = {"md5": "MD5", "sha": "SHA", "sha224": "SHA-224", "sha256": "SHA-256",
                "sha384": "SHA-384", "sha512": "SHA-512"}  # fmt: skip
NETSNMP_PRIV = {"none": "", "des": "DES", "aes": "AES", "aes192": "AES192",
                "aes192c": "AES192C", "aes256": "AES256", "aes256c": "AES256C"}  # fmt: skip
NETSNMP_USERS = {  # user: (auth_protocol, priv_protocol, as Net-SNMP's createUser spells them)
    f"{auth}-{priv}": (auth, priv, NETSNMP_AUTH[auth], NETSNMP_PRIV[priv])
    for auth in NETSNMP_AUTH
    for priv in NETSNMP_PRIV
} | {"noauth": (None, "none", "", "")}
"""Every auth x priv combination. MD5 and SHA-1 keys are shorter than AES-192/256 keys, so
there the two key extensions differ (with SHA-384/512 they coincide)."""
NETSNMP_ROW = {  # what snmpd serves for one Cerberis 3 link (MIB name: snmpd type, value)
    "cerbDetectorTemperature": ("integer", "-5012"),
    "cerbLaserTemperature": ("integer", "2534"),
    "cerbLinkPeerName": ("octet_str", "Norte"),
    "cerbLinkId": ("octet_str", "4"),
    "cerbLinkRole": ("integer", "1"),
    "cerbLinkBand": ("octet_str", "C34"),
    "cerbLinkState": ("integer", "4"),
    "cerbLinkQber": ("unsigned", "381"),
    "cerbLinkVisibility": ("unsigned", "9341"),
    "cerbLinkSecretKeyRate": ("unsigned", "1523"),
    "cerbLinkRawKeyRate": ("unsigned", "5943"),
    "cerbLinkKeyStoreFill": ("unsigned", "57"),
    "cerbLinkKeyStoreKeys": ("unsigned", "9278"),
}


@pytest.fixture(scope="module")
def netsnmp_agent(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Net-SNMP's snmpd serving one Cerberis 3 row (OIDs from the compiled MIB), a v2c
    community and one SNMPv3 user per auth/priv combination."""
    require_tools("snmpd")
    folder = tmp_path_factory.mktemp("snmpd")
    port, port6 = free_udp_port(), free_udp_port()
    mib = resolve("cerberis3")
    lines = [f"agentAddress udp:127.0.0.1:{port},udp6:[::1]:{port6}"]
    lines += ["rocommunity netsnmp-ro 127.0.0.1", "rocommunity6 netsnmp-ro ::1"]
    for user, (_, _, auth, priv) in NETSNMP_USERS.items():
        keys = (
            f" {auth} netsnmp-auth {priv} netsnmp-priv"
            if priv
            else (f" {auth} netsnmp-auth" if auth else "")
        )
        level = "priv" if priv else "auth" if auth else "noauth"
        lines += [f"createUser {user}{keys}", f"rouser {user} {level}"]
    for name, (kind, value) in NETSNMP_ROW.items():
        index = 0 if name in mib.profile.scalar_names else 1
        dotted = ".".join(map(str, (*mib.objects[name].oid, index)))
        lines.append(f"override .{dotted} {kind} {value}")
    (folder / "snmpd.conf").write_text("\n".join(lines) + "\n")
    agent = subprocess.Popen(
        ["snmpd", "-f", "-C", "-c", str(folder / "snmpd.conf"), "-M", "/dev/null",
         "-Lf", str(folder / "snmpd.log"), f"--persistentDir={folder}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ready = QkdSnmpOptions(
            address=f"127.0.0.1:{port}", profile="cerberis3", snmp={"community": "netsnmp-ro"}
        )
        deadline = time.monotonic() + 10
        while True:  # snmpd takes a moment to bind its port
            try:
                poll(QkdSnmpDriver("ready", ready, timeout=10.0))
                break
            except (Refused, DeviceTimeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port, port6
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def netsnmp_settings(user: str, priv: str | None = None) -> dict[str, Any]:
    """`snmp:` settings for a Net-SNMP user (`priv` overrides its privacy protocol)."""
    if user == "v2c":
        return {"version": "2c", "community": "netsnmp-ro"}
    auth, own_priv = NETSNMP_USERS[user][:2]
    priv = priv or own_priv
    snmp = {"version": "3", "user": user, "auth_protocol": auth, "priv_protocol": priv}
    snmp |= {"auth_key": "netsnmp-auth"} if auth else {}
    return snmp | ({"priv_key": "netsnmp-priv"} if priv != "none" else {})


NETSNMP_POLLS = [
    ("v2c", "127.0.0.1"),
    *((user, "127.0.0.1") for user in NETSNMP_USERS),
    *((user, "::1") for user in ("v2c", "sha-aes256", "md5-aes192c")),  # IPv6: [::1]:port
]


@pytest.mark.parametrize(("user", "ip"), NETSNMP_POLLS)
def test_netsnmp_agent_is_polled_over_every_security_combination(netsnmp_agent, user, ip):
    address = f"127.0.0.1:{netsnmp_agent[0]}" if ip == "127.0.0.1" else f"[::1]:{netsnmp_agent[1]}"
    options = QkdSnmpOptions(address=address, profile="cerberis3", snmp=netsnmp_settings(user))
    (samples,) = poll(QkdSnmpDriver(user, options, timeout=10.0))
    (link,), module = split(samples)
    assert link.tags["peer"] == "Norte" and (link.tags["band"], link.tags["channel"]) == ("C", "34")
    assert link.fields["qber"] == 0.0381 and link.fields["key_store_bits"] == 9278 * 256
    assert module.fields["detector_temperature_c"] == -50.12


@pytest.mark.parametrize(
    ("user", "wrong"),
    [("md5-aes192", "aes192c"), ("sha-aes192c", "aes192"), ("md5-aes256c", "aes256")],
)
def test_the_other_aes_key_extension_is_not_what_the_user_was_created_with(
    netsnmp_agent, user, wrong
):
    """The variants really differ where the auth hash is shorter than the AES key: Net-SNMP
    cannot decrypt, stays silent, and the poll times out (why the README names both)."""
    snmp = netsnmp_settings(user, priv=wrong) | {"request_timeout": 0.3, "retries": 0}
    options = QkdSnmpOptions(
        address=f"127.0.0.1:{netsnmp_agent[0]}", profile="cerberis3", snmp=snmp
    )
    error, _ = poll_error(QkdSnmpDriver(user, options, timeout=10.0))
    assert isinstance(error, DeviceTimeout), repr(error)


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"auth_key": "not-the-auth-key"}, "agent reports usmStatsWrongDigests"),
        ({"priv_key": "not-the-priv-key"}, "agent reports usmStatsDecryptionErrors"),
        ({"user": "intruder"}, "agent reports usmStatsUnknownUserNames"),
    ],
    ids=["wrong-auth-key", "wrong-priv-key", "unknown-user"],
)
def test_wrong_v3_credentials_are_auth_errors_without_secrets(single_agent, change, why):
    sim = single_agent("cerberis3", version="3")
    error, _ = poll_error(make_driver(sim.device, **change, request_timeout=0.5))
    assert isinstance(error, AuthError), repr(error)
    assert why in str(error)
    for secret in (*change.values(), sim.credentials.auth_key, sim.credentials.priv_key):
        if secret != "intruder":
            assert secret not in str(error)


def test_closed_port_is_refused_at_once(single_agent):
    sim = single_agent("cerberis3")
    device = {**sim.device, "address": f"127.0.0.1:{free_udp_port()}"}
    error, took = poll_error(make_driver(device, request_timeout=2.0))
    assert isinstance(error, Refused), repr(error)
    assert took < 1.5  # the ICMP answer, not the 2 s timeout


@pytest.mark.parametrize("version", ["2c", "3"])
def test_silent_agent_times_out_after_its_attempts(single_agent, version):
    sim = single_agent("cerberis3", version=version, unresponsive=True)
    error, took = poll_error(make_driver(sim.device, request_timeout=0.3, retries=2))
    assert isinstance(error, DeviceTimeout), repr(error)
    # request_timeout x (retries + 1), each wait up to one 0.1 s timer tick short, and with
    # room above for a loaded machine
    assert 3 * 0.2 <= took <= 3 * 0.4 + 1.0
    assert sim.credentials.community not in str(error)


@pytest.mark.parametrize(
    ("missing", "named", "lost"),
    [
        (("cerbLinkVisibility",), "cerbLinkVisibility", "qkd_link.visibility"),
        (("cerbLaserTemperature",), "cerbLaserTemperature.0", "qkd_module.laser_temperature_c"),
    ],
    ids=["column", "scalar"],
)
def test_a_missing_object_is_named_and_everything_else_read(single_agent, missing, named, lost):
    full = single_agent("cerberis3")
    (complete,) = poll(make_driver(full.device))
    sim = single_agent("cerberis3", missing=tuple(missing))
    (partial,) = poll(make_driver(sim.device))
    assert isinstance(partial, PartialPoll), type(partial)
    assert partial.missing == (named,)
    measurement, field = lost.split(".")
    for before, after in zip(complete, partial, strict=True):
        assert before.measurement == after.measurement
        expected = set(before.fields) - ({field} if before.measurement == measurement else set())
        assert set(after.fields) == expected, after.measurement


def test_an_empty_link_table_is_zero_links_not_a_failure(single_agent):
    sim = single_agent("cerberis3", missing=tuple(SIM_PROFILES["cerberis3"].columns))
    (samples,) = poll(make_driver(sim.device))
    (module,) = samples  # no qkd_link point, the module's own
    assert module.measurement == "qkd_module"
    assert (module.fields["links"], module.fields["links_generating"]) == (0, 0)
    assert "laser_temperature_c" in module.fields
    assert not isinstance(samples, PartialPoll)


def agent_with_column(madqci_topology, profile: str, column: str, value: Any):
    """A simulated module whose `column` reports `value` on every row.

    Real modules do send junk (a firmware printing "n/a" for a float); the simulators never
    do, so this starts one whose vendor profile is changed for that one column.
    """
    name = REPRESENTATIVE[profile]
    network = SimNetwork(madqci_topology, clock=ManualClock(start=5000.0), only=[name])
    agent = network.agents[name]
    agent.profile = dataclasses.replace(
        agent.profile, columns={**agent.profile.columns, column: lambda _row, _r: value}
    )
    return BackgroundNetwork(network).start(), network.info()[0]


@pytest.mark.parametrize(
    ("profile", "column", "value", "message"),
    [
        ("ait_cv", "aitcvLinkExcessNoise", "n/a", "aitcvLinkExcessNoise.1: cannot read 'n/a'"),
        ("ait_cv", "aitcvLinkTransmittance", "1.7", "aitcvLinkTransmittance.1: transmittance 1.7"),
        ("cerberis3", "cerbLinkQber", 20_000, "cerbLinkQber.1: qber 2 is out of range 0..1"),
        ("cerberis3", "cerbLinkBand", "L12", "cerbLinkBand.1: cannot read 'L12' as band"),
    ],
    ids=["ait-text-junk", "ait-transmittance-above-1", "qber-200-percent", "unknown-band"],
)
def test_junk_and_out_of_range_values_are_malformed(
    madqci_topology, profile, column, value, message
):
    background, info = agent_with_column(madqci_topology, profile, column, value)
    try:
        options = QkdSnmpOptions(address=info.address, profile=profile)
        error, _ = poll_error(QkdSnmpDriver(info.name, options, timeout=10.0))
    finally:
        background.stop()
    assert isinstance(error, Malformed), repr(error)
    assert message in str(error)


def test_a_silent_device_does_not_delay_a_good_one(single_agent):
    good = single_agent("hwdu_cv")
    silent = single_agent("cerberis3", unresponsive=True)
    drivers = [
        make_driver(good.device, request_timeout=1.0),
        make_driver(silent.device, request_timeout=1.0, retries=1),
    ]

    async def timed(driver: QkdSnmpDriver) -> tuple[Any, float]:
        started = time.monotonic()
        try:
            result: Any = await driver.poll()
        except PollError as exc:
            result = exc
        return result, time.monotonic() - started

    async def main() -> list[tuple[Any, float]]:
        try:
            await drivers[0].poll()  # warm up the good one (engine, socket, row count)
            return await asyncio.gather(*(timed(d) for d in drivers))
        finally:
            await asyncio.gather(*(d.aclose() for d in drivers))

    (good_result, good_took), (silent_result, silent_took) = asyncio.run(main())
    assert isinstance(good_result, list) and len(good_result) == 9  # 8 channels + module
    assert isinstance(silent_result, DeviceTimeout)
    assert good_took < 1.5 < 2.0 <= silent_took  # the good one never waits on the silent one


# ---- the wire: what the driver sends ---------------------------------------------------------


class Relay(asyncio.DatagramProtocol):
    """A UDP relay in front of an agent: counts the driver's requests by PDU type and can lose
    the next `drop` of them (a lost datagram, as on a congested management network)."""

    def __init__(self, agent: tuple[str, int]):
        self.agent = agent
        self.drop = 0
        self.requests: list[tuple[str, int]] = []  # (PDU type, varbinds)
        self.client: tuple[str, int] | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple) -> None:
                assert relay.front is not None
                relay.front.sendto(data, relay.client)

        self.back, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.agent)
        host, port = self.front.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.client = addr
        module = api.PROTOCOL_MODULES[api.decodeMessageVersion(data)]
        message, _ = decoder.decode(data, asn1Spec=module.Message())
        pdu = module.apiMessage.get_pdu(message)
        self.requests.append((pdu.__class__.__name__, len(module.apiPDU.get_varbinds(pdu))))
        if self.drop:
            self.drop -= 1
            return
        assert self.back is not None
        self.back.sendto(data)

    def close(self) -> None:
        for transport in (self.front, self.back):
            if transport is not None:
                transport.close()


def relayed(sim, body: Callable, **snmp: Any) -> Any:
    """Run `body(driver, relay)` with the driver polling `sim` through a relay."""

    async def main() -> Any:
        relay = Relay((sim.host, sim.port))
        address = await relay.start()
        driver = make_driver({**sim.device, "address": address}, **snmp)
        try:
            return await body(driver, relay)
        finally:
            await driver.aclose()
            relay.close()

    return asyncio.run(main())


def test_a_poll_is_one_get_and_one_getbulk_once_the_table_size_is_known(single_agent):
    sim = single_agent("toshiba")  # 2 rows x 10 columns: fits the agent's 64-varbind answers

    async def body(driver: QkdSnmpDriver, relay: Relay) -> list[tuple[str, int]]:
        await driver.poll()
        relay.requests.clear()
        for _ in range(3):
            samples = await driver.poll()
            assert len(samples) == 3
        return relay.requests

    requests = relayed(sim, body)
    # GETBULK: the 10 columns, plus the end-of-table probe after the last known row
    assert sorted(requests) == sorted([("GetRequestPDU", 2), ("GetBulkRequestPDU", 11)] * 3)


@pytest.mark.parametrize("version", ["2c", "3"])
def test_a_table_that_grows_or_shrinks_between_polls_is_read_whole(madqci_topology, version):
    """Modules swapped at one address. Over SNMPv3 each has its own engine ID, so this also
    takes the driver through rediscovery (the new agent reports usmStatsUnknownEngineIDs)."""
    port = free_udp_port()
    options = QkdSnmpOptions(
        address=f"127.0.0.1:{port}", profile="toshiba", snmp=sim_snmp_settings(version)
    )
    driver = QkdSnmpDriver("tsb", options, timeout=10.0)

    async def poll_module(name: str) -> list[Sample]:
        network = SimNetwork(madqci_topology, only=[name], base_port=port)
        background = BackgroundNetwork(network).start()  # a module swapped in at the address
        try:
            return split(await driver.poll())[0]
        finally:
            background.stop()

    async def main() -> list[list[Sample]]:
        try:
            return [await poll_module(m) for m in ("tsb-quevedo", "tsb-quijano", "tsb-norte")]
        finally:
            await driver.aclose()

    two, one, two_again = asyncio.run(main())
    assert [s.tags["link"] for s in two] == ["8", "9"]
    assert [s.tags["link"] for s in one] == ["8"]
    assert len(two_again) == 2


def test_a_table_longer_than_max_repetitions_is_walked_to_its_end(single_agent):
    sim = single_agent("hwdu_cv")

    async def body(driver: QkdSnmpDriver, relay: Relay) -> tuple[list[Sample], list]:
        return await driver.poll(), relay.requests

    samples, requests = relayed(sim, body, max_repetitions=3)
    links, module = split(samples)
    assert len(links) == module.fields["links"] == 8
    assert len({(s.tags["peer"], s.tags["link"], s.tags["channel"], s.tags["direction"])
                for s in links}) == 8  # fmt: skip
    bulks = [n for kind, n in requests if kind == "GetBulkRequestPDU"]
    assert bulks == [12, 12, 12]  # rows 1-3, 4-6, 7-9 (nothing at 9: the end), columns together


def test_a_lost_request_is_resent(single_agent):
    sim = single_agent("cerberis3")

    async def body(driver: QkdSnmpDriver, relay: Relay) -> tuple[list[Sample], float]:
        await driver.poll()
        relay.drop = 1
        started = time.monotonic()
        samples = await driver.poll()
        return samples, time.monotonic() - started

    samples, took = relayed(sim, body, request_timeout=0.3, retries=1)
    assert len(samples) == 2
    assert 0.2 <= took < 2.0  # one request_timeout (less a 0.1 s timer tick), then the answer


# ---- configuration -----------------------------------------------------------------------------


def two_devices(snmp: dict[str, Any]) -> str:
    """A configuration whose second device has the given `snmp:` section."""
    good = {"name": "ok", "driver": "qkd_snmp", "address": "10.0.0.1", "profile": "toshiba"}
    bad = {"name": "bad", "driver": "qkd_snmp", "address": "10.0.0.2", "profile": "cerberis3"}
    return yaml.safe_dump({"devices": [good, {**bad, "snmp": snmp}]}, sort_keys=False)


V3 = {"version": "3", "user": "ops"}
AUTH = {"auth_protocol": "sha", "auth_key": "long-enough-key"}


@pytest.mark.parametrize(
    ("snmp", "where", "message"),
    [
        ({**V3, "auth_protocol": "sha256", "auth_key": "s3cr"},
         "auth_key", "keys must be at least 8 characters"),
        ({**V3, "priv_protocol": "aes", "priv_key": "s3cr3t-priv"},
         "priv_protocol", "priv_protocol aes needs authentication too"),
        ({"version": "3"}, "user", "SNMPv3 needs a user name"),
        ({"community": "s3cr3t-community", "auth_protocol": "sha"},
         "auth_protocol", "auth_protocol is an SNMPv3 setting"),
        ({**V3, "community": "s3cr3t-community"}, "community", "community is an SNMPv2c setting"),
        ({**V3, **AUTH, "priv_protocol": "aes"}, "priv_key", "priv_protocol aes needs a priv_key"),
        ({**V3, **AUTH, "priv_key": "s3cr3t-priv"}, "priv_key", "priv_protocol is none"),
    ],
    ids=["short-key", "priv-without-auth", "v3-without-user", "v3-key-on-v2c",
         "community-on-v3", "priv-without-key", "priv-key-without-protocol"],
)  # fmt: skip
def test_inconsistent_snmp_settings_are_config_errors_at_their_key(snmp, where, message):
    with pytest.raises(ConfigError) as info:
        load_config_text(two_devices(snmp))
    (problem,) = info.value.problems
    assert problem.startswith(f"devices[1].snmp.{where} (line ")
    assert message in problem
    assert "s3cr" not in str(info.value)


def test_security_level_follows_the_protocols():
    def level(**snmp: Any) -> str:
        options = QkdSnmpOptions.model_validate(
            {"address": "h", "profile": "toshiba", "snmp": {"version": "3", "user": "u", **snmp}}
        )
        return options.snmp.security_level

    assert level() == "noAuthNoPriv"
    assert level(auth_protocol="sha512", auth_key="k" * 8) == "authNoPriv"
    assert (
        level(auth_protocol="sha256", auth_key="k" * 8, priv_protocol="aes256", priv_key="p" * 8)
        == "authPriv"
    )

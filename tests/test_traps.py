"""The trap receiver against Net-SNMP's `snmptrap` / `snmpinform`: real UDP notifications, v2c
and v3, from the configured device address or a stranger's (127.0.0.2, via `--clientaddr`).

OIDs on the command lines come from the compiled MIBs through the driver's profiles.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from qkdtel.config import ConfigError, load_config_text
from qkdtel.drivers.qkd_snmp.options import TrapOptions
from qkdtel.drivers.qkd_snmp.resolve import resolve
from qkdtel.drivers.qkd_snmp.traps import TrapReceiver
from qkdtel.sdk import Sample

pytestmark = pytest.mark.usefixtures("netsnmp_tools")

V3 = {
    "user": "trapper",
    "auth_protocol": "sha256",
    "auth_key": "trap-auth-key",
    "priv_protocol": "aes",
    "priv_key": "trap-priv-key",
}
V3_ARGS = ["-v3", "-u", "trapper", "-l", "authPriv", "-a", "SHA-256", "-A", "trap-auth-key"]
V3_ARGS += ["-x", "AES", "-X", "trap-priv-key"]
SENDER_ENGINE = "0x80001f8880c0ffee0042"


def oid(profile: str, name: str, index: int | None = None) -> str:
    """Dotted OID of a MIB object (instance `index` of a column) or notification."""
    mib = resolve(profile)
    if name in mib.objects:
        number = mib.objects[name].oid
    else:
        number = next(n.oid for n in mib.notifications.values() if n.name == name)
    return "." + ".".join(map(str, number if index is None else (*number, index)))


def varbinds(profile: str, values: dict[str, tuple[str, str]], index: int = 1) -> list[str]:
    """`{object: (snmptrap type letter, value)}` -> snmptrap varbind arguments."""
    out = []
    for name, (kind, value) in values.items():
        out += [oid(profile, name, index), kind, value]
    return out


class Harness:
    """A started receiver and the notifications it hands over."""

    def __init__(self, receiver: TrapReceiver):
        self.receiver = receiver
        self.queue: asyncio.Queue[Sample] = asyncio.Queue()

    @property
    def target(self) -> str:
        """The receiver as Net-SNMP names a transport address (IPv6: `udp6:[::1]:PORT`)."""
        host, port = self.receiver.address
        return f"udp6:[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def send(self, *args: str, tool: str = "snmptrap", client: str | None = None) -> int:
        """Run the Net-SNMP tool (numeric OIDs, no MIB loading); return its exit status."""
        extra = [f"--clientaddr={client}"] if client else []
        proc = await asyncio.create_subprocess_exec(
            tool, "-M", "/dev/null", "-r", "0", "-t", "1", *extra, *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return await proc.wait()

    async def trap(self, profile: str, notification: str, values: dict, *, v3: bool = False,
                   community: str = "trapcomm", client: str | None = None,
                   tool: str = "snmptrap") -> int:  # fmt: skip
        auth = [*V3_ARGS, "-e", SENDER_ENGINE] if v3 else ["-v2c", "-c", community]
        if v3 and tool == "snmpinform":
            auth = V3_ARGS  # an inform is sent to the receiver's engine, discovered
        return await self.send(
            *auth, self.target, "", oid(profile, notification), *varbinds(profile, values),
            tool=tool, client=client,
        )  # fmt: skip

    async def next(self, timeout: float = 3.0) -> Sample:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, wait: float = 0.5) -> bool:
        await asyncio.sleep(wait)
        return self.queue.empty()


def run(
    test,
    devices: Sequence[tuple[str, str, dict]] = (),
    users: Sequence[dict] = (),
    communities: Sequence[str] | None = ("trapcomm",),
    listen: str = "127.0.0.1:0",
) -> None:
    """Start a receiver on `listen` (a free loopback port), run `test(harness)`, stop it.
    `communities` None: the option is left out, as a config that does not name it."""

    async def main() -> None:
        given = {} if communities is None else {"communities": list(communities)}
        settings = TrapOptions(listen=listen, users=list(users), **given)
        harness = Harness(TrapReceiver(settings, list(devices), lambda s: _put(harness, s)))
        await harness.receiver.start()
        try:
            await test(harness)
        finally:
            await harness.receiver.stop()

    asyncio.run(main())


async def _put(harness: Harness, samples: list[Sample]) -> None:
    for sample in samples:
        harness.queue.put_nowait(sample)


QUEVEDO = [("quevedo-idq", "127.0.0.1", {"node": "Quevedo", "domain": "RM"})]

CASES = [
    # profile, notification, carried values, event, severity, expected fields
    ("cerberis3", "cerbQberThresholdAlarm", {"cerbLinkQber": ("u", "1250")},
     "qber_threshold", "warning", {"qber": 0.125}),
    ("cerberis3", "cerbLinkDown", {"cerbLinkState": ("i", "5")},
     "link_down", "critical", {"vendor_state": "error"}),
    ("cerberis3", "cerbKeyStoreEmpty", {"cerbLinkKeyStoreKeys": ("u", "0")},
     "key_store_empty", "major", {"key_store_bits": 0}),
    ("toshiba", "tqkdQberAlarm", {"tqkdLinkQberPpm": ("u", "51000")},
     "qber_threshold", "warning", {"qber": 0.051}),
    ("toshiba", "tqkdLinkStatusChange", {"tqkdLinkStatus": ("i", "4")},
     "link_down", "critical", {"vendor_state": "fault"}),
    ("toshiba", "tqkdLinkStatusChange", {"tqkdLinkStatus": ("i", "3")},
     "link_up", "info", {"vendor_state": "running"}),
    ("toshiba", "tqkdKeyBufferEmpty", {"tqkdLinkKeyBufferBits": ("u", "512")},
     "key_store_empty", "major", {"key_store_bits": 512}),
    ("hwdu_cv", "hwcvExcessNoiseAlarm", {"hwcvChannelExcessNoise": ("u", "12000")},
     "excess_noise_threshold", "warning", {"excess_noise_snu": 0.012}),
    ("hwdu_cv", "hwcvChannelDown", {"hwcvChannelState": ("i", "5")},
     "link_down", "critical", {"vendor_state": "alarm"}),
    ("hwdu_cv", "hwcvKeyPoolEmpty", {"hwcvChannelKeyPoolBits": ("u", "0")},
     "key_store_empty", "major", {"key_store_bits": 0}),
    ("ait_cv", "aitcvExcessNoiseHigh", {"aitcvLinkExcessNoise": ("s", "0.0345")},
     "excess_noise_threshold", "warning", {"excess_noise_snu": 0.0345}),
    ("ait_cv", "aitcvLinkDown", {"aitcvLinkOperStatus": ("i", "1")},
     "link_down", "critical", {"vendor_state": "down"}),
    ("ait_cv", "aitcvKeyStoreEmpty", {"aitcvLinkKeyStoreFill": ("u", "5")},
     "key_store_empty", "major", {"key_store_fill_ratio": 0.005}),
]  # fmt: skip

PEER_LINK = {
    "cerberis3": ("cerbLinkPeerName", "cerbLinkId"),
    "toshiba": ("tqkdLinkPeer", "tqkdLinkName"),
    "hwdu_cv": ("hwcvChannelPeer", "hwcvChannelLink"),
    "ait_cv": ("aitcvLinkPeer", "aitcvLinkId"),
}
VENDOR = {"cerberis3": "idq", "toshiba": "toshiba", "hwdu_cv": "hwdu", "ait_cv": "ait"}


@pytest.mark.parametrize(
    ("profile", "notification", "carried", "event", "severity", "fields"),
    CASES,
    ids=[f"{c[1]}-{c[3]}" for c in CASES],
)
def test_every_notification_becomes_one_normalised_event(
    profile, notification, carried, event, severity, fields
):
    peer, link = PEER_LINK[profile]
    values = {peer: ("s", "Norte"), link: ("s", "3+4"), **carried}

    async def test(h: Harness) -> None:
        assert await h.trap(profile, notification, values) == 0
        sample = await h.next()
        assert sample.measurement == "qkd_event"
        assert dict(sample.tags) == {
            "device": "quevedo-idq",
            "node": "Quevedo",
            "domain": "RM",
            "vendor": VENDOR[profile],
            "peer": "Norte",
            "link": "3+4",
            "event": event,
            "severity": severity,
        }
        assert dict(sample.fields) == {
            "notification": notification,
            "source": "127.0.0.1",
            **fields,
        }

    run(test, QUEVEDO)


def test_sender_that_is_no_configured_device_is_unknown():
    async def test(h: Harness) -> None:
        carried = {"cerbLinkPeerName": ("s", "Norte"), "cerbLinkQber": ("u", "300")}
        assert await h.trap("cerberis3", "cerbQberThresholdAlarm", carried) == 0
        sample = await h.next()
        assert sample.tags["device"] == "unknown"
        assert "node" not in sample.tags
        assert sample.fields["qber"] == pytest.approx(0.03)

    run(test, [("elsewhere", "192.0.2.10", {"node": "Norte"})])


def test_devices_sharing_an_address_are_told_apart_by_their_agent_port(single_agent):
    """Simulated modules all live on 127.0.0.1 and send traps from their agent port, as many
    embedded agents do: given `host:port`, the receiver names each; given the bare host, it
    cannot choose among them and says `unknown`."""
    from qkdtel.sims.snmp.profiles import TrapCondition

    sims = [single_agent("cerberis3"), single_agent("toshiba")]

    def expect(named: bool):
        async def test(h: Harness) -> None:
            for sim in sims:
                row = sim.agent.rows[0]
                sim.background.call(
                    lambda s=sim, r=row: asyncio.ensure_future(
                        s.agent.notify(TrapCondition.KEY_STORE_EMPTY, r, h.receiver.address)
                    )
                )
                sample = await h.next()
                assert sample.tags["device"] == (sim.agent.name if named else "unknown")
                assert sample.tags.get("node") == (sim.agent.site if named else None)

        return test

    community = [sims[0].credentials.community]
    with_ports = [(s.agent.name, s.address, {"node": s.agent.site}) for s in sims]
    run(expect(named=True), with_ports, communities=community)
    hosts_only = [(s.agent.name, s.host, {"node": s.agent.site}) for s in sims]
    run(expect(named=False), hosts_only, communities=community)


def test_v3_traps_of_several_modules_on_one_address_each_learn_their_engine_id(single_agent):
    from qkdtel.sims.snmp.profiles import TrapCondition

    sims = [single_agent("hwdu_cv"), single_agent("ait_cv")]
    creds = sims[0].credentials
    user = {"user": creds.user, "auth_protocol": "sha256", "auth_key": creds.auth_key}
    user |= {"priv_protocol": "aes", "priv_key": creds.priv_key}

    async def test(h: Harness) -> None:
        for sim in sims:
            row = sim.agent.rows[0]
            sim.background.call(
                lambda s=sim, r=row: asyncio.ensure_future(
                    s.agent.notify(TrapCondition.QUALITY_ALARM, r, h.receiver.address, version="3")
                )
            )
            sample = await h.next()
            assert sample.tags["device"] == sim.agent.name
            assert sample.tags["event"] == "excess_noise_threshold"
            assert 0 < sample.fields["excess_noise_snu"] < 0.5

    run(test, [(s.agent.name, s.address, {}) for s in sims], users=[user], communities=[])


def test_wrong_community_is_dropped():
    async def test(h: Harness) -> None:
        carried = {"cerbLinkState": ("i", "5")}
        await h.trap("cerberis3", "cerbLinkDown", carried, community="guess")
        assert await h.nothing()
        await h.trap("cerberis3", "cerbLinkDown", carried)  # the receiver still works
        assert (await h.next()).tags["event"] == "link_down"

    run(test, QUEVEDO)


def test_v3_authpriv_trap_from_a_device_learns_its_engine_id_and_wrong_key_is_dropped():
    async def test(h: Harness) -> None:
        carried = {"hwcvChannelPeer": ("s", "Norte"), "hwcvChannelExcessNoise": ("u", "9000")}
        assert await h.trap("hwdu_cv", "hwcvExcessNoiseAlarm", carried, v3=True) == 0
        sample = await h.next()
        assert sample.tags["device"] == "quevedo-idq"
        assert sample.fields["excess_noise_snu"] == pytest.approx(0.009)

        wrong = [*V3_ARGS[:-1], "not-the-priv-key", "-e", SENDER_ENGINE]
        wrong[wrong.index("trap-auth-key")] = "not-the-auth-key"
        args = [h.target, "", oid("hwdu_cv", "hwcvChannelDown")]
        await h.send(*wrong, *args)
        assert await h.nothing()

    run(test, QUEVEDO, users=[V3])


def test_v3_users_without_communities_refuse_v2c_even_as_public():
    """The default community "public" applies only to a receiver with no SNMPv3 user: one set
    up for v3 would otherwise take forged v2c notifications under the well-known name."""

    async def test(h: Harness) -> None:
        carried = {"cerbLinkState": ("i", "5")}
        await h.trap("cerberis3", "cerbLinkDown", carried, community="public")
        assert await h.nothing()
        assert await h.trap("cerberis3", "cerbLinkDown", carried, v3=True) == 0
        assert (await h.next()).tags["event"] == "link_down"

    run(test, QUEVEDO, users=[V3], communities=None)
    assert [c.get_secret_value() for c in TrapOptions().communities] == ["public"]


def test_v3_trap_from_a_stranger_needs_a_configured_engine_id():
    carried = {"cerbLinkState": ("i", "1")}

    async def without(h: Harness) -> None:
        await h.trap("cerberis3", "cerbLinkDown", carried, v3=True, client="127.0.0.2")
        assert await h.nothing()

    async def with_engine_id(h: Harness) -> None:
        await h.trap("cerberis3", "cerbLinkDown", carried, v3=True, client="127.0.0.2")
        sample = await h.next()
        assert (sample.tags["device"], sample.fields["source"]) == ("unknown", "127.0.0.2")

    run(without, QUEVEDO, users=[V3])
    run(with_engine_id, QUEVEDO, users=[{**V3, "engine_id": SENDER_ENGINE}])


@pytest.mark.parametrize("v3", [False, True], ids=["v2c", "v3"])
def test_inform_is_acknowledged_and_becomes_an_event(v3):
    async def test(h: Harness) -> None:
        carried = {"tqkdLinkStatus": ("i", "4")}
        status = await h.trap("toshiba", "tqkdLinkStatusChange", carried, v3=v3, tool="snmpinform")
        assert status == 0  # snmpinform exits non-zero when no acknowledgement comes back
        assert (await h.next()).fields["vendor_state"] == "fault"

    run(test, QUEVEDO, users=[V3])


def test_unacknowledged_inform_with_wrong_community():
    async def test(h: Harness) -> None:
        carried = {"tqkdLinkStatus": ("i", "4")}
        status = await h.trap(
            "toshiba", "tqkdLinkStatusChange", carried, community="guess", tool="snmpinform"
        )
        assert status != 0
        assert h.queue.empty()

    run(test, QUEVEDO)


def test_foreign_notification_is_ignored():
    from pysnmp.smi.builder import MibBuilder

    (cold_start,) = (
        MibBuilder().load_modules("SNMPv2-MIB").import_symbols("SNMPv2-MIB", "coldStart")
    )

    async def test(h: Harness) -> None:
        await h.send(
            "-v2c", "-c", "trapcomm", h.target, "", "." + ".".join(map(str, cold_start.name))
        )
        assert await h.nothing()

    run(test, QUEVEDO)


def test_junk_value_loses_its_field_not_the_event():
    async def test(h: Harness) -> None:
        carried = {"aitcvLinkPeer": ("s", "Norte"), "aitcvLinkExcessNoise": ("s", "n/a")}
        await h.trap("ait_cv", "aitcvExcessNoiseHigh", carried)
        sample = await h.next()
        assert sample.tags["event"] == "excess_noise_threshold"
        assert sample.tags["peer"] == "Norte"
        assert "excess_noise_snu" not in sample.fields

    run(test, QUEVEDO)


def test_stop_releases_the_port():
    bound: list[tuple[str, int]] = []

    async def test(h: Harness) -> None:
        bound.append(h.receiver.address)

    run(test)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(bound[0])  # would fail with EADDRINUSE if the receiver still held it


def test_invalid_users_are_reported_by_path_without_secrets():
    text = (
        "traps:\n"
        "  users:\n"
        "    - {user: ok, auth_protocol: sha256, auth_key: long-enough}\n"
        "    - {user: bad, auth_protocol: sha256, auth_key: s3cr}\n"
        "    - {user: bad2, priv_protocol: aes, priv_key: priv-secret-1}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    message = str(info.value)
    assert "traps.users[1].auth_key (line 4): " in message
    assert "traps.users[2].priv_protocol (line 5): " in message
    assert "traps.users[0]" not in message
    assert "s3cr" not in message and "priv-secret-1" not in message

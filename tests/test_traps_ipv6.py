"""The trap receiver over IPv6 and dual-stack, against Net-SNMP's `snmptrap` over `udp6:[::1]`:
v2c and v3 traps attributed to devices configured with IPv6 addresses, a forged digest refused
as over IPv4, and on `[::]` IPv4 senders attributed exactly as on an IPv4 socket (their
IPv4-mapped address `::ffff:a.b.c.d` never shows).

IPv6 may be disabled on a machine's loopback (`net.ipv6.conf.lo.disable_ipv6`): the IPv6 tests
then skip, with that reason; the rest (addresses in canonical form, `listen` written without
brackets) run everywhere.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import subprocess
import sys

import pytest

from qkdtel.config import ConfigError, load_config, load_config_text
from qkdtel.drivers.qkd_snmp import traps
from qkdtel.drivers.qkd_snmp.traps import listen_problem, sender_ip
from tests.test_snmp_attacks import link_down, v3_args
from tests.test_traps import QUEVEDO, V3, Harness, oid, run, varbinds

pytestmark = pytest.mark.usefixtures("netsnmp_tools")


@functools.cache
def ipv6_loopback() -> bool:
    """Whether `::1` can be bound here (checked once)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def ipv6() -> None:
    """IPv6 on loopback, or the test is skipped: a kernel setting, not a missing feature."""
    if not ipv6_loopback():
        pytest.skip("IPv6 is disabled on this machine's loopback")


def free_udp6_port() -> int:
    """A UDP port free on `::1` (a device's agent port in the configuration)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        return sock.getsockname()[1]


def port_of(h: Harness) -> int:
    return h.receiver.address[1]


@pytest.mark.usefixtures("ipv6")
def test_v2c_and_v3_authpriv_traps_over_ipv6_are_attributed_to_the_ipv6_device():
    """The device is written in a non-canonical form: `0:0::1` is the `::1` traps come from."""
    agent = free_udp6_port()
    devices = [("madrid-v6", f"[0:0:0:0:0:0:0:1]:{agent}", {"node": "Quevedo"})]

    async def test(h: Harness) -> None:
        assert h.target.startswith("udp6:[::1]:")
        carried = {"cerbLinkPeerName": ("s", "Norte"), "cerbLinkQber": ("u", "800")}
        assert await h.trap("cerberis3", "cerbQberThresholdAlarm", carried) == 0
        sample = await h.next()
        assert (sample.tags["device"], sample.tags["node"]) == ("madrid-v6", "Quevedo")
        assert sample.fields["source"] == "::1"
        assert sample.fields["qber"] == pytest.approx(0.08)

        carried = {"hwcvChannelPeer": ("s", "Norte"), "hwcvChannelExcessNoise": ("u", "9000")}
        assert await h.trap("hwdu_cv", "hwcvExcessNoiseAlarm", carried, v3=True) == 0
        sample = await h.next()
        assert (sample.tags["device"], sample.fields["source"]) == ("madrid-v6", "::1")
        assert sample.fields["excess_noise_snu"] == pytest.approx(0.009)
        assert [engine.address for engine in h.receiver._learned[True].values()] == ["::1"]

    run(test, devices, users=[V3], listen="[::1]:0")


@pytest.mark.usefixtures("ipv6")
def test_devices_sharing_an_ipv6_address_are_told_apart_by_their_agent_port():
    """Two modules on `::1` sending from their agent ports (`--clientaddr=[::1]:PORT`), one
    written in a non-canonical form: each trap carries its own device."""
    ports = free_udp6_port(), free_udp6_port()
    devices = [
        ("first", f"[::1]:{ports[0]}", {}),
        ("second", f"[0000:0::0001]:{ports[1]}", {}),
    ]
    carried = {"tqkdLinkStatus": ("i", "4")}

    async def test(h: Harness) -> None:
        for name, port in [("first", ports[0]), ("second", ports[1]), ("first", ports[0])]:
            client = f"[::1]:{port}"
            assert await h.trap("toshiba", "tqkdLinkStatusChange", carried, client=client) == 0
            assert (await h.next()).tags["device"] == name

    run(test, devices, listen="[::1]:0")


@pytest.mark.usefixtures("ipv6")
def test_forged_digest_over_ipv6_is_refused_like_over_ipv4(caplog):
    async def test(h: Harness) -> None:
        forged = v3_args("authPriv")
        forged[forged.index("trap-auth-key")] = "not-the-auth-key"
        with caplog.at_level(logging.WARNING, logger=traps.__name__):
            assert await h.send(*forged, *link_down(h.target)) == 0
            assert await h.nothing()
        assert h.receiver.refused["wrong_digest"] == 1
        assert h.receiver.accepted == 0
        (refusal,) = [r for r in caplog.records if getattr(r, "reason", None)]
        assert (refusal.sender, refusal.listen) == ("::1", "[::1]:0")  # as `listen` is written
        assert await h.send(*v3_args("authPriv"), *link_down(h.target)) == 0
        assert (await h.next()).tags["event"] == "link_down"  # the receiver still works

    run(test, [("madrid-v6", "[::1]", {})], users=[V3], listen="[::1]:0")


@pytest.mark.usefixtures("ipv6")
def test_ipv6_only_listen_does_not_take_ipv4():
    async def test(h: Harness) -> None:
        await h.send("-v2c", "-c", "trapcomm", *link_down(f"127.0.0.1:{port_of(h)}"))
        assert await h.nothing()
        assert h.receiver.accepted == 0

    run(test, QUEVEDO, listen="[::1]:0")


@pytest.mark.usefixtures("ipv6")
def test_dual_stack_attributes_ipv4_senders_as_ipv4_and_ipv6_ones_as_ipv6(caplog):
    """On `[::]` an IPv4 sender arrives as `::ffff:127.0.0.1`; the receiver attributes,
    learns engines, logs refusals and reports `source` under 127.0.0.1 all the same."""
    devices = [*QUEVEDO, ("madrid-v6", "[::1]", {"node": "Norte"})]

    async def test(h: Harness) -> None:
        assert h.receiver.address[0] == "::"
        # whatever net.ipv6.bindv6only says, the receiver turned IPV6_V6ONLY off itself
        bound = h.receiver._transport.transport.get_extra_info("socket")
        assert bound.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        ipv4, ipv6 = f"127.0.0.1:{port_of(h)}", f"udp6:[::1]:{port_of(h)}"
        assert await h.send("-v2c", "-c", "trapcomm", *link_down(ipv4)) == 0
        sample = await h.next()
        assert (sample.tags["device"], sample.tags["node"]) == ("quevedo-idq", "Quevedo")
        assert sample.fields["source"] == "127.0.0.1"

        assert await h.send(*v3_args("authPriv"), *link_down(ipv4)) == 0
        assert (await h.next()).tags["device"] == "quevedo-idq"
        assert [engine.address for engine in h.receiver._learned[True].values()] == ["127.0.0.1"]

        with caplog.at_level(logging.WARNING, logger=traps.__name__):
            assert await h.send("-v2c", "-c", "guess", *link_down(ipv4)) == 0
            assert await h.nothing()
        (refusal,) = [r for r in caplog.records if getattr(r, "reason", None)]
        assert (refusal.sender, refusal.reason) == ("127.0.0.1", "wrong_community")

        assert await h.send("-v2c", "-c", "trapcomm", *link_down(ipv6)) == 0
        sample = await h.next()
        assert (sample.tags["device"], sample.fields["source"]) == ("madrid-v6", "::1")

    run(test, devices, users=[V3], communities=["trapcomm"], listen="[::]:0")


@pytest.mark.usefixtures("ipv6")
@pytest.mark.parametrize(
    ("listen", "family"), [("[::1]:0", "udp6:[::1]"), ("[::]:0", "127.0.0.1")], ids=["v6", "v4"]
)
def test_inform_over_ipv6_and_dual_stack_is_acknowledged(listen, family):
    """pysnmp answers an inform through the receiver's IPv6 transport, to an IPv4-mapped
    sender too: `snmpinform` exits 0 only once the acknowledgement reached it."""
    devices = [*QUEVEDO, ("madrid-v6", "[::1]", {})]
    carried = varbinds("toshiba", {"tqkdLinkStatus": ("i", "4")})

    async def test(h: Harness) -> None:
        target = f"{family}:{port_of(h)}"
        args = ["-v2c", "-c", "trapcomm", target, "", oid("toshiba", "tqkdLinkStatusChange")]
        assert await h.send(*args, *carried, tool="snmpinform") == 0
        sample = await h.next()
        assert sample.fields["vendor_state"] == "fault"
        expected = "madrid-v6" if family.startswith("udp6") else "quevedo-idq"
        assert sample.tags["device"] == expected

    run(test, devices, listen=listen)


def test_sender_addresses_are_compared_in_canonical_form():
    assert sender_ip("2001:DB8::1") == sender_ip("2001:db8:0::1") == "2001:db8::1"
    assert sender_ip("::ffff:10.0.4.21") == "10.0.4.21"
    assert sender_ip("fe80::1%eth0") == "fe80::1"
    assert sender_ip("10.0.4.21") == "10.0.4.21"


@pytest.mark.usefixtures("ipv6")
def test_listen_problem_probes_the_family_of_the_host():
    assert listen_problem("[::1]:162") is None
    assert listen_problem("[::]:162") is None
    problem = listen_problem("[2001:db8::5]:162")
    assert problem == "cannot listen on [2001:db8::5]: Cannot assign requested address"


def test_listen_problem_on_a_kernel_without_ipv6(monkeypatch):
    """A kernel without IPv6 cannot be had on a machine that has it: socket creation is made
    to fail as it does there (EAFNOSUPPORT), for IPv6 sockets only."""
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args, **kwargs) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(traps.socket, "socket", no_ipv6)
    assert listen_problem("[::1]:162") == "[::1]:162: IPv6 is not available on this machine"
    assert listen_problem("127.0.0.1:162") is None


def check(tmp_path, listen: str) -> subprocess.CompletedProcess:
    """`qkdtel check` of a file whose trap receiver listens on `listen`."""
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(f"traps: {{listen: '{listen}'}}\nsinks: [{{type: file, path: lp}}]\n")
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.usefixtures("ipv6")
def test_check_accepts_an_ipv6_listen_in_brackets(tmp_path):
    result = check(tmp_path, "[::1]:162")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    cfg = tmp_path / "qkdtel.yaml"
    assert load_config(cfg).listeners[0].options.listen == "[::1]:162"


def test_check_refuses_an_ipv6_listen_without_brackets(tmp_path):
    result = check(tmp_path, "::1:162")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "traps.listen (line 1): an IPv6 address goes in brackets: [::1]:162" in result.stderr
    assert len([line for line in result.stderr.splitlines() if "listen" in line]) == 1


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("[::1]", "expected host:port, e.g. 0.0.0.0:162"),
        ("[1::2::3]:162", "[1::2::3] is not an IPv6 address"),
        ("2001:db8::5", "an IPv6 address goes in brackets: [::1]:162, [::]:162"),
    ],
)
def test_ipv6_listen_written_wrong_is_refused_naming_listen(listen, problem):
    with pytest.raises(ConfigError) as info:
        load_config_text(f"listeners: [{{type: snmp_traps, listen: '{listen}'}}]\n")
    assert info.value.problems == [f"listeners[0].listen (line 1): {problem}"]

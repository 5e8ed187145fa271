"""Debian's netconfd (yuma123) with the switch module loaded, behind a real OpenSSH sshd, on a
free loopback port: the independent NETCONF peer of issue 9.

netconfd speaks NETCONF on a unix socket; OpenSSH's `Subsystem netconf` runs yuma123's
`netconf-subsystem`, which relays the SSH channel to that socket. Two yuma123 details learnt
the hard way: netconf-subsystem takes the socket as `--ncxserver-sockname=<ssh port>@<path>`
(a bare path is ignored and /tmp/ncxserver.sock used), and netconfd refuses the relayed session
("agt_connect error (access denied)") unless `--port` names the SSH port. netconfd keeps the
configuration only: the module's state (power monitors, oper-state) has no instrumentation
there, so the driver must do without it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qkdtel.drivers.netconf_switch.model import yang_file
from qkdtel.sims.influxd import free_port

PORTS_CONFIG = """
<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
  <optical-switch xmlns="urn:example:qkdtel:optical-switch">
    {ports}
  </optical-switch>
</config>
"""
INGRESS = {1: ("3", "quantum"), 2: ("3", "classical"), 3: ("4", "quantum"), 4: ("9", "quantum")}
"""The seeded switch: ingress 1..4 (link, what it carries), egress 5..8 the same links."""


@dataclass
class Netconfd:
    """netconfd behind sshd: where it listens and how to log in."""

    port: int
    user: str
    key_file: Path
    known_hosts: Path
    log: Path

    def options(self, **overrides: Any) -> dict[str, Any]:
        ports: dict[int, dict[str, str]] = {}
        for number, (link, carries) in INGRESS.items():
            for port in (number, number + 4):
                role = {"carries": carries, "link": link}
                if carries == "quantum":
                    role["technology"] = "cv"
                ports[port] = role
        return {
            "address": "127.0.0.1",
            "port": self.port,
            "username": self.user,
            "key_file": str(self.key_file),
            "known_hosts": str(self.known_hosts),
            "ports": ports,
            # netconfd 2.13 drops the candidate at the commit that follows a <validate>
            # (tests/test_netconfd_interop.py shows it); its commit validates anyway
            "validate_candidate": False,
            **overrides,
        }


def _wait_for(check, what: str, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not come up:\n{detail}")
        time.sleep(0.1)


def _sshd_config(home: Path, port: int, socket_path: Path) -> Path:
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"PidFile {home / 'sshd.pid'}\nAuthorizedKeysFile {home / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        f"Subsystem netconf /usr/sbin/netconf-subsystem --ncxserver-sockname={port}@{socket_path}\n"
    )
    return config


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def netconfd() -> Iterator[Netconfd]:
    """A fresh netconfd (empty configuration) with sshd in front; both stopped after."""
    for tool in ("netconfd", "/usr/sbin/netconf-subsystem", "/usr/sbin/sshd", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} missing: scripts/bootstrap.sh installs netconfd and sshd")
    home = Path(tempfile.mkdtemp(prefix="ncd"))  # short: a unix socket path has 108 bytes
    port, user = free_port(), getpass.getuser()
    socket_path = home / "ncx.sock"
    _keygen(home / "host_key")
    _keygen(home / "client_key")
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    host_key = (home / "host_key.pub").read_text().split()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    log = home / "netconfd.log"
    daemon = subprocess.Popen(
        [
            "netconfd",
            f"--module={yang_file()}",
            "--no-startup",
            "--target=candidate",
            f"--superuser={user}",
            f"--ncxserver-sockname={socket_path}",
            f"--port={port}",
            f"--log={log}",
            "--log-level=info",
        ],
        env={**os.environ, "HOME": str(home)},
        cwd=home,  # netconfd writes backup-cfg.xml into its working directory
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sshd = None
    try:
        _wait_for(socket_path.exists, "netconfd", log)
        sshd_log = home / "sshd.log"
        sshd = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(_sshd_config(home, port, socket_path))],
            stdout=subprocess.DEVNULL,
            stderr=sshd_log.open("w"),
        )
        _wait_for(lambda: "listening" in sshd_log.read_text(), "sshd", sshd_log)
        yield Netconfd(port, user, home / "client_key", home / "known_hosts", log)
    finally:
        for process in (sshd, daemon):
            if process is not None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(home, ignore_errors=True)


def seed_ports(manager) -> None:
    """Give the empty netconfd the switch's ports (labels), as its panel would have them."""
    ports = []
    for number, (link, carries) in INGRESS.items():
        kind = "q" if carries == "quantum" else "c"
        for port, end in ((number, "in"), (number + 4, "out")):
            ports.append(
                f"<port><port-id>{port}</port-id><label>l{link}-{kind}-{end}</label></port>"
            )
    manager.edit_config(target="candidate", config=PORTS_CONFIG.format(ports="".join(ports)))
    manager.commit()

"""Pytest fixtures for anything that talks SNMP to the simulated QKD modules.

Fixtures
--------
``snmp_sims`` (session scope)
    The whole MadQCI twin (``sims/madqci.yaml``, 28 modules) running in this process on free
    loopback UDP ports, simulated time at ``SIMS_SPEED`` (60x), seed 0. Returns a `SnmpSims`:

    - ``agents``: module name -> `AgentInfo` (``host``, ``port``, ``address``, ``profile``,
      ``site``, ``domain``, ``credentials``: `Credentials` with ``community``, ``user``,
      ``auth_key``, ``priv_key``; SNMPv3 is SHA-256 + AES-128 authPriv);
    - ``config_path`` / ``config_path_v3``: generated collector configs polling every agent
      with SNMPv2c / SNMPv3, both with ``traps: {listen: <trap_target>}``;
    - ``trap_target``: (host, port) the agents send their SNMPv2c traps to (nothing listens
      there unless a test starts a receiver on it);
    - ``network`` (`SimNetwork`) and ``background`` (`BackgroundNetwork`) for deeper access;
      touch a running agent only through ``background.call(fn)``.

    Shared by every test of the session: do not leave faults switched on.

``single_agent`` (function scope, a factory)
    ``single_agent(profile, *, version="2c", unresponsive=False, missing=(), clock=None,
    trap_target=None, trap_version="2c", module=None, seed=0)`` starts one agent of ``profile``
    (cerberis3, toshiba, hwdu_cv, ait_cv; by default a representative MadQCI module of that
    family, or ``module`` by name) and returns a `SingleAgent`: ``host``, ``port``, ``address``,
    ``profile``, ``credentials``, ``device`` (a collector ``devices:`` entry using SNMP
    ``version``), ``agent`` (the `SimAgent`: rows, channel models, sent notifications),
    ``clock`` and ``background``. Pass ``clock=ManualClock()`` to drive simulated time by hand.
    Fault knobs: ``unresponsive`` (drops every request; toggle with ``set_unresponsive``) and
    ``missing`` (MIB object names answered with noSuchObject). Stopped after the test.

``madqci_topology`` (session scope)
    The validated `Topology` of ``sims/madqci.yaml``.

``netsnmp_mibdirs`` (session scope)
    A value for Net-SNMP's ``-M`` option that resolves the qkdtel MIBs (with stand-ins for the
    SMIv2 core modules, which this machine does not have), e.g.
    ``snmpwalk -M <it> -m QKDTEL-IDQ-CERBERIS3-MIB ...``.

``netsnmp_state`` (session scope, autouse)
    Every Net-SNMP tool the tests run keeps its persistent state in a fresh directory of this
    session (``SNMP_PERSISTENT_DIR``), never in the machine's ``/var/lib/snmp``: a test sees
    the same on a fresh machine as on one that ran Net-SNMP before. The first Net-SNMP command
    in a new directory announces what it creates there ("Created directory: .../cert_indexes")
    on stderr; one warm-up command takes that first run, so tests that demand a clean stderr
    see none of it.

``netsnmp_tools`` (session scope)
    Fails, never skips, when a Net-SNMP tool the tests drive is missing: ./run-tests installs
    them (scripts/bootstrap.sh); a missing tool is a broken set-up, not a reason to test less.

Helpers: ``free_udp_port()``, ``require_tools(*names)`` (the same check for any tool), and
``REPRESENTATIVE`` (profile -> the twin module ``single_agent`` starts for it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from qkdtel.mibs import MIB_DIR
from qkdtel.mibs.smiv2_core import write_core_modules
from qkdtel.sims import collector_config
from qkdtel.sims.clock import AcceleratedClock, SimClock
from qkdtel.sims.snmp.agent import Credentials, Faults, SimAgent
from qkdtel.sims.snmp.network import AgentInfo, BackgroundNetwork, SimNetwork
from qkdtel.sims.topology import Topology, load_topology

SIMS_SPEED = 60.0
"""Simulated seconds per real second in the session-wide twin."""

REPRESENTATIVE = {
    "cerberis3": "idq-quevedo-l4",  # link 4, the highest QBER
    "toshiba": "tsb-quevedo",  # two rows (links 8 and 9)
    "hwdu_cv": "hwdu-norte-l4",  # eight rows, switched paths down to -19.5 dB SNR
    "ait_cv": "ait-montegancedo",
}


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class SnmpSims:
    """The running MadQCI twin (see the module docstring)."""

    agents: dict[str, AgentInfo]
    config_path: Path
    config_path_v3: Path
    trap_target: tuple[str, int]
    network: SimNetwork
    background: BackgroundNetwork

    def daemon_config(
        self, path: Path, influxdb_url: str, db: str, interval: float, *, traps: bool = True,
        **collector: Any,
    ) -> Path:  # fmt: skip
        """Write to `path` the twin's config for a real daemon: every device every `interval`
        s into InfluxDB `db`, a spool beside `path`, self-telemetry every second, `collector`
        settings added; `traps=False` drops the trap listener (a port has one owner)."""
        document = yaml.safe_load(self.config_path.read_text())
        document["collector"] = {
            "spool_dir": str(path.parent / "spool"),
            "flush_interval": 0.2,
            "self_telemetry_interval": 1.0,
            **collector,
        }
        document["sinks"] = [{"type": "influxdb_v1", "url": influxdb_url, "database": db}]
        if not traps:
            document.pop("listeners", None)
            document.pop("traps", None)
        for device in document["devices"]:
            device["interval"] = interval
        path.write_text(yaml.safe_dump(document))
        return path


@dataclass
class SingleAgent:
    """One running simulated module (see the module docstring)."""

    host: str
    port: int
    profile: str
    credentials: Credentials
    device: dict[str, Any]
    agent: SimAgent
    clock: SimClock
    background: BackgroundNetwork

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set_unresponsive(self, value: bool) -> None:
        """Stop or resume answering, on the agent's own loop."""

        def apply() -> None:
            self.agent.unresponsive = value

        self.background.call(apply)


NETSNMP_TOOLS = ("snmpd", "snmptrapd", "snmptrap", "snmpinform", "snmpwalk", "snmptranslate")


def require_tools(*names: str) -> None:
    """Fail the test (never skip it) if one of these commands is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: ./run-tests installs them (scripts/bootstrap.sh)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def netsnmp_tools() -> None:
    """Net-SNMP's tools are installed (see the module docstring)."""
    require_tools(*NETSNMP_TOOLS)


@pytest.fixture(scope="session", autouse=True)
def netsnmp_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh SNMP_PERSISTENT_DIR for the session, its first-run creation taken (module doc)."""
    state = tmp_path_factory.mktemp("netsnmp-state") / "persistent"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SNMP_PERSISTENT_DIR", str(state))
        if shutil.which("snmptranslate"):
            warm_up = subprocess.run(
                ["snmptranslate", "-M", "/dev/null", "-On", ".1.3.6.1"],
                capture_output=True,
                text=True,
                env={**os.environ, "MIBS": "", "SNMPCONFPATH": "/nonexistent"},
                check=False,
            )
            assert warm_up.returncode == 0, warm_up.stderr
        yield state


@pytest.fixture(scope="session")
def madqci_topology() -> Topology:
    """The bundled MadQCI twin topology, validated."""
    return load_topology()


@pytest.fixture(scope="session")
def snmp_sims(
    madqci_topology: Topology, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SnmpSims]:
    trap_target = ("127.0.0.1", free_udp_port())
    network = SimNetwork(
        madqci_topology, seed=0, clock=AcceleratedClock(SIMS_SPEED), trap_target=trap_target
    )
    folder = tmp_path_factory.mktemp("snmp-sims")
    with BackgroundNetwork(network) as background:
        infos = network.info()
        paths = []
        for v3, name in ((False, "sims.yaml"), (True, "sims-v3.yaml")):
            document = collector_config.render(infos, v3=v3, trap_target=trap_target)
            paths.append(collector_config.write(folder / name, document))
        yield SnmpSims(
            agents={i.name: i for i in infos},
            config_path=paths[0],
            config_path_v3=paths[1],
            trap_target=trap_target,
            network=network,
            background=background,
        )


@pytest.fixture
def single_agent(madqci_topology: Topology) -> Iterator[Callable[..., SingleAgent]]:
    started: list[BackgroundNetwork] = []

    def start(
        profile: str,
        *,
        version: str = "2c",
        unresponsive: bool = False,
        missing: Sequence[str] = (),
        clock: SimClock | None = None,
        trap_target: tuple[str, int] | None = None,
        trap_version: str = "2c",
        module: str | None = None,
        seed: int = 0,
    ) -> SingleAgent:
        name = module or REPRESENTATIVE[profile]
        faults = Faults(unresponsive=unresponsive, missing_objects=frozenset(missing))
        network = SimNetwork(
            madqci_topology,
            seed=seed,
            clock=clock or AcceleratedClock(SIMS_SPEED),
            trap_target=trap_target,
            trap_version=trap_version,
            only=[name],
            faults={name: faults},
        )
        background = BackgroundNetwork(network).start()
        started.append(background)
        (info,) = network.info()
        return SingleAgent(
            host=info.host,
            port=info.port,
            profile=info.profile,
            credentials=info.credentials,
            device=collector_config.device_entry(info, v3=version == "3"),
            agent=network.agents[name],
            clock=network.clock,
            background=background,
        )

    yield start
    for background in started:
        background.stop()


@pytest.fixture(scope="session")
def netsnmp_mibdirs(tmp_path_factory: pytest.TempPathFactory) -> str:
    core = write_core_modules(tmp_path_factory.mktemp("smiv2-core"))
    return f"{core}:{MIB_DIR}"

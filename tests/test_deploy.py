"""Deploying the daemon as a service: the systemd unit in packaging/ passes `systemd-analyze
verify`, and the daemon runs as that unit's kind of user (no home it can write, a working
directory it cannot write, only $STATE_DIRECTORY its own), keeping all its state there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from qkdtel.paths import SYSTEM_STATE_DIR
from qkdtel.spool import SPOOL_FILE

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "packaging" / "qkdtel.service"
QKDTEL = Path(sys.executable).parent / "qkdtel"
NOBODY = 65534


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, each key with all its values (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of the unit, its ExecStart pointed at this venv's qkdtel (verify
    wants the binaries to exist; no systemd needs to run)."""
    path = directory / "qkdtel.service"
    path.write_text(unit_text.replace("/usr/bin/qkdtel", str(QKDTEL)))
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def complaints(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What verify said about our unit (it may also talk about the machine's own units)."""
    return [ln for ln in result.stderr.splitlines() if "qkdtel.service" in ln]


def test_unit_verifies_and_is_hardened(tmp_path):
    result = verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert complaints(result) == [], result.stderr
    settings = unit_settings(UNIT.read_text())
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "qkdtel",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus": "2",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert settings["CapabilityBoundingSet"] == [""]  # no capability at all
    # The unit passes no paths: the daemon takes them from $STATE_DIRECTORY.
    assert "spool" not in " ".join(settings["ExecStart"])


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt value and a missing binary are both reported."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictest")
    assert complaints(verify(broken, tmp_path)), "a bad ProtectSystem value went unnoticed"
    missing = UNIT.read_text().replace("/usr/bin/qkdtel run", "/usr/bin/qkdtel-nowhere run")
    result = verify(missing.replace("/usr/bin/qkdtel-nowhere", "/nonexistent/qkdtel"), tmp_path)
    assert result.returncode != 0 or complaints(result)


@pytest.fixture
def service_root() -> Iterator[Path]:
    """A directory uid 65534 can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="qkdtel-svc-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def as_service_user(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`qkdtel ARGS` as uid/gid 65534 the way the unit starts it: $STATE_DIRECTORY its own,
    a home and a working directory it cannot write."""
    home = root / "home"  # root's, read-only to the service user (ProtectHome=read-only)
    home.mkdir(mode=0o555, exist_ok=True)
    cwd = root / "cwd"  # root's too: nothing may land in the working directory
    cwd.mkdir(mode=0o555, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "STATE_DIRECTORY": str(root / "state"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*setpriv, sys.executable, "-m", "qkdtel.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def test_runs_as_the_service_user_with_a_read_only_home(service_root: Path):
    assert os.geteuid() == 0, "needs root to run as another user"
    state = service_root / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)  # what StateDirectory= does
    config = service_root / "qkdtel.yaml"  # names no path: every default comes from the service
    config.write_text(
        yaml.safe_dump(
            {
                "collector": {"self_telemetry_interval": 0.5, "flush_interval": 0.2},
                "devices": [  # nobody answers: the poll fails, but the MIBs get compiled
                    {
                        "name": "norte",
                        "driver": "qkd_snmp",
                        "address": "127.0.0.1:9",
                        "profile": "toshiba",
                        "interval": 1,
                        "timeout": 0.5,
                    }
                ],
            }
        )
    )
    config.chmod(0o644)

    check = as_service_user(service_root, "check", "-c", str(config))
    assert check.returncode == 0, check.stderr
    assert not any(state.iterdir()), "check created something"

    run = as_service_user(service_root, "run", "-c", str(config), "--duration", "3")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert (state / "spool" / SPOOL_FILE).is_file()
    assert any((state / "mibs").iterdir()), "the MIBs were not compiled into the state dir"
    lines = "".join(p.read_text() for p in (state / "lineprotocol").iterdir())
    assert "qkdtel_device_status,device=norte" in lines
    assert "qkdtel_collector," in lines
    assert not any((service_root / "home").iterdir())
    assert not any((service_root / "cwd").iterdir())


def test_default_paths_follow_the_environment(tmp_path):
    """Root without systemd: /var/lib/qkdtel; another user: $XDG_STATE_HOME, else ~/.local/state;
    $STATE_DIRECTORY (its first entry) over all of them. Never the working directory."""
    probe = (
        "from qkdtel.config import load_config_text as l; c = l('{}').config;"
        "print(c.collector.spool_dir, c.effective_sinks()[0].path)"
    )

    def defaults(env: dict[str, str], user: list[str] = ()) -> list[str]:
        base = {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run(
            [*user, sys.executable, "-c", probe],
            env={**base, **env},
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        return out.stdout.split()

    nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    assert defaults({"HOME": "/root"}) == [
        f"{SYSTEM_STATE_DIR}/spool",
        f"{SYSTEM_STATE_DIR}/lineprotocol",
    ]
    assert defaults({"STATE_DIRECTORY": "/srv/a:/srv/b"}) == ["/srv/a/spool", "/srv/a/lineprotocol"]
    assert defaults({"HOME": "/home/u", "XDG_STATE_HOME": "/xdg"}, nobody) == [
        "/xdg/qkdtel/spool",
        "/xdg/qkdtel/lineprotocol",
    ]
    assert defaults({"HOME": "/home/u"}, nobody)[0] == "/home/u/.local/state/qkdtel/spool"


def test_container_image_has_the_same_defaults():
    """The Containerfile (built by .ci/run where a builder runs; none does here) keeps state
    where the unit does, runs as a user of its own, and starts the same command."""
    lines = (REPO / "Containerfile").read_text().splitlines()
    instructions = [ln.split(None, 1) for ln in lines if ln and not ln.startswith((" ", "#"))]
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    by_op: dict[str, list[str]] = {}
    for op, rest in final:
        by_op.setdefault(op, []).append(rest)
    assert f"STATE_DIRECTORY={SYSTEM_STATE_DIR}" in by_op["ENV"][0]
    assert by_op["USER"] == ["qkdtel"]
    assert by_op["VOLUME"] == [f'["{SYSTEM_STATE_DIR}"]']
    exec_start = unit_settings(UNIT.read_text())["ExecStart"][0].split()
    assert by_op["ENTRYPOINT"] == ['["qkdtel"]']
    assert by_op["CMD"] == ["[" + ", ".join(f'"{w}"' for w in exec_start[1:]) + "]"]

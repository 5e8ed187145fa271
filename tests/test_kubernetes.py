"""deploy/kubernetes: every manifest valid against Kubernetes' own OpenAPI schemas (the
`kubernetes-validate` package bundles them, offline), and the pieces agree with each other and
with the daemon: shard count, /healthz port, spool on the volume, secrets by reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / name).read_text())


def _container() -> dict[str, Any]:
    return _load("statefulset.yaml")["spec"]["template"]["spec"]["containers"][0]


def _config() -> dict[str, Any]:
    return yaml.safe_load(_load("configmap.yaml")["data"]["qkdtel.yaml"])


def _config_text() -> str:
    return _load("configmap.yaml")["data"]["qkdtel.yaml"]


@pytest.mark.parametrize("name", ["configmap.yaml", "service.yaml", "statefulset.yaml"])
def test_manifest_is_valid_kubernetes(name: str) -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(_load(name), version, strict=True)  # raises on any error


def test_the_validator_refuses_a_broken_statefulset() -> None:
    """The check above can fail: a misspelt field is an error in strict mode."""
    broken = _load("statefulset.yaml")
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_load("kustomization.yaml")["resources"])
    assert listed == {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}


def test_pod_ordinal_is_the_shard_of_replicas() -> None:
    args = _container()["args"]
    count = int(args[args.index("--shard-from-hostname") + 1])
    assert count == _load("statefulset.yaml")["spec"]["replicas"]


def test_probes_ask_healthz_on_the_configured_port() -> None:
    container = _container()
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    host, _, listen_port = _config()["collector"]["health"]["listen"].rpartition(":")
    assert int(listen_port) == port and host == "0.0.0.0"  # reachable by the kubelet
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_spool_lives_on_the_claimed_volume() -> None:
    sts = _load("statefulset.yaml")
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in _container()["volumeMounts"]}
    spool_dir = Path(_config()["collector"]["spool_dir"])
    assert "spool" in claims
    assert spool_dir.is_relative_to(mounts["spool"])
    env = {e["name"]: e.get("value") for e in _container()["env"]}
    assert env["STATE_DIRECTORY"] == mounts["spool"]


def test_every_secret_comes_from_a_secret_reference() -> None:
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", _config_text()))
    from_secrets = {
        e["name"] for e in _container()["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert referenced and referenced == from_secrets


def test_the_configmap_file_passes_qkdtel_check(tmp_path: Path) -> None:
    """The shipped configuration is one the daemon accepts (its spool moved under tmp_path:
    the check looks at this machine's directories)."""
    document = _config()
    document["collector"]["spool_dir"] = str(tmp_path / "spool")
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(yaml.safe_dump(document))
    secrets = {"INFLUX_TOKEN": "t0ken-x", "QKD_AUTH": "authkey-123", "QKD_PRIV": "pr1vkey-4"}
    env = {**os.environ, **secrets}
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "1 device(s)" in result.stdout
    assert not any(value in result.stdout + result.stderr for value in secrets.values())

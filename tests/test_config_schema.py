"""`qkdtel config schema` describes the file the loader reads, no more and no less.

Every configuration the documentation shows (each drivers/*/sample.yaml, every YAML block of
README.md and of the drivers' READMEs) must pass the JSON Schema an editor validates with AND
`qkdtel check`, the real loader; a few documents both must refuse show they refuse alike.
The `check` runs are forked children of one warmed-up process (tests/cli_batch.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV_VALUE = "example-secret-value"


def _documents() -> list[tuple[str, str]]:
    """(name, YAML text) of every configuration the documentation shows."""
    docs = [
        (str(p.relative_to(ROOT)), p.read_text())
        for p in sorted(ROOT.glob("drivers/*/sample.yaml"))
    ]
    for readme in [ROOT / "README.md", *sorted(ROOT.glob("drivers/*/README.md"))]:
        blocks = re.findall(r"```ya?ml\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
        docs += [(f"{readme.relative_to(ROOT)}[{i}]", block) for i, block in enumerate(blocks)]
    return docs


DOCUMENTS = _documents()


@pytest.fixture(scope="module")
def schema() -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "config", "schema"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _runnable_here(text: str, tmp: Path) -> str:
    """The document with what names a production host's files pointed at files here:
    `<secret>_file:` at a real secret file, `spool_dir:` at a temporary folder."""
    secret = tmp / "secret"
    secret.write_text(f"{ENV_VALUE}\n")
    text = re.sub(r"(\w+_file): *\S+", rf"\1: {secret}", text)
    return re.sub(r"spool_dir: *\S+", f"spool_dir: {tmp / 'spool'}", text)


def _schema_errors(schema: dict, text: str) -> list[str]:
    data = yaml.safe_load(text)
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(data)]


def _check_all(texts: list[str], tmp: Path) -> list[tuple[int, str]]:
    """(exit status, stderr) of `qkdtel check -c` on each document, environment set."""
    jobs = []
    for i, text in enumerate(texts):
        (tmp / f"{i}.yaml").write_text(text)
        jobs.append(
            {
                "argv": ["check", "-c", str(tmp / f"{i}.yaml")],
                "cwd": str(tmp),
                "stdout": str(tmp / f"{i}.out"),
                "stderr": str(tmp / f"{i}.err"),
            }
        )
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    names = {n for t in texts for n in re.findall(r"\$\{([A-Za-z_]\w*)", t)}
    env = {**dict.fromkeys(names, ENV_VALUE), **os.environ}
    subprocess.run(
        [sys.executable, "-m", "tests.cli_batch", str(tmp / "jobs.json"), str(tmp / "out.json")],
        check=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    codes = json.loads((tmp / "out.json").read_text())
    return [(code, (tmp / f"{i}.err").read_text()) for i, code in enumerate(codes)]


def test_the_documentation_shows_configurations_of_every_driver():
    names = [name for name, _ in DOCUMENTS]
    assert len([n for n in names if n.endswith("sample.yaml")]) >= 9
    assert any(n.startswith("README.md[") for n in names)


def test_every_documented_configuration_passes_schema_and_loader(schema, tmp_path):
    texts = [_runnable_here(text, tmp_path) for _, text in DOCUMENTS]
    failures = []
    for (name, _), text in zip(DOCUMENTS, texts, strict=True):
        failures += [f"{name}: schema: {e}" for e in _schema_errors(schema, text)]
    for (name, _), (code, err) in zip(DOCUMENTS, _check_all(texts, tmp_path), strict=True):
        if code != 0:
            failures.append(f"{name}: qkdtel check exit {code}: {err.strip()}")
    assert not failures, "\n".join(failures)


BASE = "sinks: [{type: file, path: @TMP@/lp}]\n"
PM = "{name: a, driver: powermeter, heads: [{channel: 1}], visa: {resource: 'ASRL/dev/ttyS0::INSTR'"
QKD = "{name: a, driver: qkd_snmp, address: 10.0.0.1"
AGREE = {
    # name: (document after BASE, accepted by both?)
    "duration with unit": (f"devices: [{PM}, timeout: 500ms}}, interval: 2m}}]", True),
    "duration bad unit": (f"devices: [{PM}}}, interval: 2x}}]", False),
    "number from env": ("collector: {batch_size: '${QKDTEL_T_BATCH}'}", True),
    "bool from env": (f"devices: [{QKD}, profile: toshiba, enabled: '${{QKDTEL_T_BOOL}}'}}]", True),
    "enum from env": (f"devices: [{QKD}, profile: '${{QKDTEL_T_PROFILE}}'}}]", True),
    "secret file": (
        f"devices: [{QKD}, profile: toshiba, snmp: {{community_file: @TMP@/s}}}}]",
        True,
    ),
    "secret and its file": (
        f"devices: [{QKD}, profile: toshiba, snmp: {{community: x, community_file: @TMP@/s}}}}]",
        False,
    ),
    "unknown key": (f"devices: [{QKD}, profile: toshiba, colour: red}}]", False),
    "listener by type": ("listeners: [{type: snmp_traps, listen: '127.0.0.1:10162'}]", True),
    "listener bad option": ("listeners: [{type: snmp_traps, listn: '127.0.0.1:10162'}]", False),
    "bytes with unit": ("collector: {spool_max_bytes: 64MiB}", True),
}


def test_schema_and_loader_accept_and_refuse_alike(schema, tmp_path, monkeypatch):
    env = {"QKDTEL_T_BATCH": "250", "QKDTEL_T_BOOL": "false", "QKDTEL_T_PROFILE": "cerberis3"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "s").write_text("public\n")
    texts = [(BASE + doc).replace("@TMP@", str(tmp_path)) for doc, _ in AGREE.values()]
    results = _check_all(texts, tmp_path)
    wrong = []
    for (name, (_, accepted)), text, (code, err) in zip(AGREE.items(), texts, results, strict=True):
        by_schema = not _schema_errors(schema, text)
        if (by_schema, code == 0) != (accepted, accepted):
            wrong.append(f"{name}: schema {by_schema}, check exit {code} {err.strip()}")
    assert not wrong, "\n".join(wrong)

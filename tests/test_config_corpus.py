"""A corpus of broken configuration files through the real `qkdtel check` and `qkdtel run`.

Every file must end the same way in both commands: exit status 2, the file named, the error's
path and line, no traceback, and none of the secrets planted in the corpus. `run` loads the
file through the same function as `check`, so it must refuse exactly what `check` refuses,
with the same words. The runs are `python -m qkdtel.cli` in forked children of one warmed-up process
(tests/cli_batch.py: a cold start costs a second); a sample is checked against cold starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SECRET = "S3CRET"
"""Planted in every secret of the corpus (passwords, tokens, keys, environment values)."""
SECRET_NUMBER = "918273645546"
"""A secret written as a YAML number."""
ENV = {"QKDTEL_CORPUS_SECRET": f"{SECRET}-from-env", "QKDTEL_CORPUS_PORT": "no-port"}
UNSET = "QKDTEL_CORPUS_UNSET"


@dataclass(frozen=True)
class Case:
    """One broken file: its name, its content (`@TMP@` is the test's directory), and the
    fragment of the error that names where the problem is."""

    name: str
    content: str | bytes
    expect: str


V1 = "{type: influxdb_v1, url: 'https://influx.example:8086', database: qkd"
V2 = "{type: influxdb_v2, url: 'https://influx.example:8086', bucket: qkd"
SNMP = "{name: idq-1, driver: qkd_snmp, address: '127.0.0.1:161', profile: cerberis3"
OSA = "{name: osa-1, driver: osa, dialect: yokogawa"
VISA = "{resource: 'TCPIP::127.0.0.1::10001::SOCKET'"

CORPUS = [
    # --- YAML syntax, the offending line holding a secret ---------------------------------
    Case(
        "syntax-mapping-in-value",
        f"sinks:\n  - {V1},\n     password: {SECRET}: WORD}}\n",
        "line 3, column",
    ),
    Case(
        "syntax-block-mapping-value",
        f"sinks:\n  - type: influxdb_v1\n    password: {SECRET}: WORD\n",
        "line 3, column 21",
    ),
    Case(
        "syntax-unclosed-quote",
        f"sinks:\n  - type: influxdb_v2\n    token: '{SECRET}\n",
        "line 3, column",
    ),
    Case("syntax-undefined-alias", f"sinks:\n  - {V1}, password: *{SECRET}}}\n", "line 2, column"),
    Case("syntax-unknown-tag", f"sinks:\n  - {V1}, password: !{SECRET} x}}\n", "line 2, column"),
    Case(
        "syntax-int-tag",
        f"collector:\n  concurrency: !!int {SECRET}\n",
        "line 2, column 16: not valid YAML: the value is not a valid int",
    ),
    Case(
        "syntax-float-tag", f"collector:\n  flush_interval: !!float {SECRET}\n", "line 2, column 19"
    ),
    Case(
        "syntax-timestamp-tag",
        f"collector:\n  spool_dir: !!timestamp {SECRET}\n",
        "line 2, column 14",
    ),
    Case("syntax-binary-tag", f"sinks:\n  - {V2}, token: !!binary {SECRET}x}}\n", "line 2, column"),
    Case("syntax-unknown-escape", f'sinks:\n  - {V2}, token: "\\q{SECRET}"}}\n', "line 2, column"),
    Case(
        "syntax-duplicate-anchor",
        f"collector: &{SECRET} {{}}\ntraps: &{SECRET} {{}}\n",
        "line 2, column 8",
    ),
    Case(
        "syntax-tab-indent",
        "collector:\n\tconcurrency: 4\n",
        "line 2, column 1: not valid YAML: found character '\\t'",
    ),
    Case("syntax-unclosed-flow", "sinks: [{type: file\n", "line 2, column 1"),
    Case("syntax-two-documents", "collector: {}\n---\ndevices: []\n", "line 2, column 1"),
    Case("syntax-unhashable-key", "collector:\n  ? [a, b]\n  : 1\n", "line 2, column 3"),
    Case(
        "syntax-key-without-colon", f"collector:\n  concurrency: 4\n{SECRET}\n", "line 4, column 1"
    ),
    Case(
        "syntax-alias-cycle",
        "devices: &loop [*loop]\n",
        "devices[0] (line 1): a YAML alias that contains itself",
    ),
    Case(
        "syntax-alias-bomb",  # ten to the ninth strings if aliases were expanded
        'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
        + "devices: *a8\n",
        "devices[0] (line 8): Input should be a valid dictionary",
    ),
    Case(
        "syntax-nested-too-deeply",
        "devices: " + "[" * 5000 + "]" * 5000 + "\n",
        "not valid YAML: nested too deeply",
    ),
    Case("syntax-top-level-list", "- collector\n- devices\n", "(top level): expected a mapping"),
    Case("syntax-top-level-secret-scalar", f"{SECRET}\n", "(top level): expected a mapping"),
    # --- wrong types ------------------------------------------------------------------------
    Case(
        "type-concurrency-word",
        "collector:\n  concurrency: many\n",
        "collector.concurrency (line 2)",
    ),
    Case("type-collector-scalar", "collector: 5\n", "collector (line 1)"),
    Case("type-sinks-mapping", "sinks: {type: file}\n", "sinks (line 1)"),
    Case("type-devices-scalar", "devices: 5\n", "devices (line 1): expected a list of devices"),
    Case("type-device-scalar", "devices:\n  - 5\n", "devices[0] (line 2)"),
    Case(
        "type-password-list",
        f"sinks:\n  - {V1}, password: [{SECRET}]}}\n",
        "sinks[0].password (line 2)",
    ),
    Case(
        "type-token-mapping",
        f"sinks:\n  - {V2}, token: {{{SECRET}: 1}}}}\n",
        "sinks[0].token (line 2)",
    ),
    Case(
        "type-auth-key-number",
        f"devices:\n  - {SNMP}, snmp: {{version: '3', user: u, auth_protocol: sha,"
        f" auth_key: {SECRET_NUMBER}}}}}\n",
        "devices[0].snmp.auth_key (line 2)",
    ),
    Case(
        "type-verify-tls-secret",
        f"sinks:\n  - {V2}, verify_tls: {SECRET}}}\n",
        "sinks[0].verify_tls (line 2)",
    ),
    Case(
        "type-sink-type-secret",
        f"sinks:\n  - {{type: {SECRET}, url: 'http://x:1'}}\n",
        "sinks[0] (line 2): 'type' should be one of",
    ),
    Case("type-unknown-top-key", "collectr: {}\n", "collectr (line 1): Extra inputs"),
    Case(
        "type-overflow-literal",
        "collector:\n  overflow: sometimes\n",
        "collector.overflow (line 2)",
    ),
    Case(
        "type-url-scheme",
        f"sinks:\n  - {{type: influxdb_v2, url: 'ftp://x', bucket: b, token: {SECRET}}}\n",
        "sinks[0].url (line 2)",
    ),
    Case("type-device-no-driver", "devices:\n  - {name: x}\n", "devices[0].driver (line 2)"),
    Case(
        "type-unknown-driver",
        "devices:\n  - {name: x, driver: warp_drive}\n",
        "devices[0].driver (line 2): no driver named",
    ),
    Case(
        "type-snmp-community-v3",
        f"devices:\n  - {SNMP}, snmp: {{version: '3', user: u, community: {SECRET}-community}}}}\n",
        "devices[0].snmp.community (line 2)",
    ),
    Case(
        "type-short-auth-key",
        f"devices:\n  - {SNMP}, snmp: {{version: '3', user: u, auth_protocol: sha,"
        f" auth_key: {SECRET}}}}}\n",
        "devices[0].snmp.auth_key (line 2)",
    ),
    # --- bounds -----------------------------------------------------------------------------
    Case(
        "bound-grace-inf",
        "collector:\n  shutdown_grace: .inf\n",
        "collector.shutdown_grace (line 2): Input should be a finite number",
    ),
    Case(
        "bound-grace-ten-minutes",
        "collector:\n  shutdown_grace: 10m\n",
        "collector.shutdown_grace (line 2)",
    ),
    Case(
        "bound-flush-1e308",
        "collector:\n  flush_interval: 1.0e+308\n",
        "collector.flush_interval (line 2)",
    ),
    Case(
        "bound-backoff-huge-hours",
        "collector:\n  max_backoff: " + "9" * 400 + "h\n",
        "collector.max_backoff (line 2)",
    ),
    Case(
        "bound-interval-nan",
        "devices:\n  - {name: x, driver: qkd_snmp, interval: .nan}\n",
        "devices[0].interval (line 2)",
    ),
    Case(
        "bound-interval-two-days",
        "devices:\n  - {name: x, driver: qkd_snmp, interval: 48h}\n",
        "devices[0].interval (line 2)",
    ),
    Case(
        "bound-timeout-negative",
        "devices:\n  - {name: x, driver: qkd_snmp, timeout: -1}\n",
        "devices[0].timeout (line 2)",
    ),
    Case(
        "bound-duration-unit",
        "collector:\n  retry_max_delay: 2d\n",
        "collector.retry_max_delay (line 2)",
    ),
    Case(
        "bound-concurrency-huge",
        "collector:\n  concurrency: 100000000000000000000\n",
        "collector.concurrency (line 2)",
    ),
    Case(
        "bound-spool-points-inf",
        "collector:\n  spool_max_points: .inf\n",
        "collector.spool_max_points (line 2)",
    ),
    Case(
        "bound-spool-bytes-huge",
        "collector:\n  spool_max_bytes: 99999999999999999TiB\n",
        "collector.spool_max_bytes (line 2)",
    ),
    Case("bound-batch-inf", "collector:\n  batch_size: -.inf\n", "collector.batch_size (line 2)"),
    Case(
        "bound-rotate-huge",
        "sinks:\n  - {type: file, path: '@TMP@/lp', rotate_bytes: 99999999999999999999999}\n",
        "sinks[0].rotate_bytes (line 2)",
    ),
    Case(
        "bound-sink-timeout-11m",
        f"sinks:\n  - {V2}, timeout: 11m}}\n",
        "sinks[0].timeout (line 2): Input should be less than or equal to 600",
    ),
    Case(
        "bound-visa-timeout-inf",
        f"devices:\n  - {OSA}, visa: {VISA}, timeout: .inf}}}}\n",
        "devices[0].visa.timeout (line 2)",
    ),
    Case(
        "bound-snmp-timeout-8d",
        f"devices:\n  - {SNMP}, snmp: {{request_timeout: 192h}}}}\n",
        "devices[0].snmp.request_timeout (line 2)",
    ),
    Case(
        "bound-osa-margin-inf",
        f"devices:\n  - {OSA}, visa: {VISA}}}, occupied_margin_db: .inf}}\n",
        "devices[0].occupied_margin_db (line 2)",
    ),
    Case(
        "bound-powermeter-nan",
        "devices:\n  - name: pm\n    driver: powermeter\n"
        "    visa: {resource: 'ASRL/dev/null::INSTR'}\n    heads: [{wavelength_nm: .nan}]\n",
        "devices[0].heads[0].wavelength_nm (line 5)",
    ),
    Case(
        "bound-otdr-pulse-inf",
        f"devices:\n  - {{name: o, driver: otdr, link: l, visa: {VISA}}}, pulse_width_ns: .inf}}\n",
        "devices[0].pulse_width_ns (line 2)",
    ),
    Case(
        "bound-trap-port-big",
        "traps:\n  listen: 127.0.0.1:70000\n",
        "traps.listen (line 2): port 70000 is out of range",
    ),
    Case(
        "bound-trap-port-zero", "traps:\n  listen: 127.0.0.1:0\n", "traps.listen (line 2): port 0"
    ),
    Case(
        "bound-trap-no-port",
        "traps:\n  listen: 127.0.0.1\n",
        "traps.listen (line 2): expected host:port",
    ),
    Case(
        "bound-trap-ipv6-no-brackets",
        "traps:\n  listen: '::1:10162'\n",
        "traps.listen (line 2): an IPv6 address goes in brackets",
    ),
    Case(
        "bound-trap-not-local",
        "traps:\n  listen: 192.0.2.1:10162\n",
        "traps.listen (line 2): cannot listen on 192.0.2.1",
    ),
    # --- paths the daemon creates, writes or reads ----------------------------------------
    Case(
        "path-spool-under-file",
        "collector:\n  spool_dir: /etc/hostname/spool\n",
        "collector.spool_dir (line 2): /etc/hostname/spool cannot be created:"
        " /etc/hostname is not a directory",
    ),
    Case(
        "path-spool-is-file",
        "collector:\n  spool_dir: /etc/hostname\n",
        "collector.spool_dir (line 2): /etc/hostname exists and is not a directory",
    ),
    Case(
        "path-spool-in-proc",
        "collector:\n  spool_dir: /proc/self/spool\n",
        "collector.spool_dir (line 2): /proc/self/spool cannot be created:"
        " /proc/self is not writable",
    ),
    Case(
        "path-file-sink-under-file",
        "sinks:\n  - {type: file, path: /etc/hostname/lp}\n",
        "sinks[0].path (line 2)",
    ),
    Case(
        "path-ca-file-missing",
        f"sinks:\n  - {V2}, token: {SECRET}, ca_file: /nonexistent/ca.pem}}\n",
        "sinks[0].ca_file (line 2): cannot read /nonexistent/ca.pem",
    ),
    Case(
        "path-ca-file-garbage",
        f"sinks:\n  - {V1}, password: {SECRET}, ca_file: '@TMP@/garbage.pem'}}\n",
        "sinks[0].ca_file (line 2)",
    ),
    Case(
        "path-ca-file-directory",
        f"sinks:\n  - {V1}, ca_file: /etc}}\n",
        "sinks[0].ca_file (line 2)",
    ),
    # --- secrets from files ----------------------------------------------------------------
    Case(
        "secret-token-file-missing",
        f"sinks:\n  - {V2}, token_file: /nonexistent/token}}\n"
        f"traps:\n  listen: 127.0.0.1:10162\n  communities: [{SECRET}-community]\n",
        "sinks[0] (line 2): token_file: cannot read /nonexistent/token",
    ),
    Case(
        "secret-token-and-file",
        f"sinks:\n  - {V2}, token: {SECRET}, token_file: '@TMP@/latin1-secret'}}\n",
        "sinks[0] (line 2): give either token or token_file",
    ),
    Case(
        "secret-file-not-utf8",
        f"sinks:\n  - {V2}, token_file: '@TMP@/latin1-secret'}}\n",
        "sinks[0] (line 2): token_file: @TMP@/latin1-secret is not UTF-8 text",
    ),
    Case(
        "secret-auth-key-file-missing",
        f"devices:\n  - {SNMP}, snmp: {{version: '3', user: u, auth_protocol: sha,"
        f" auth_key_file: /nonexistent/key, priv_protocol: aes, priv_key: {SECRET}-priv}}}}\n",
        "devices[0].snmp (line 2): auth_key_file: cannot read /nonexistent/key",
    ),
    # --- environment references --------------------------------------------------------------
    Case(
        "env-unset",
        f"sinks:\n  - {V2}, token: '${{{UNSET}}}'}}\n",
        f"sinks[0].token (line 2): environment variable {UNSET} is not set",
    ),
    Case(
        "env-unfinished",
        f"sinks:\n  - {V1}, password: '${{QKDTEL_{SECRET}'}}\n",
        "sinks[0].password (line 2): an unfinished ${ reference",
    ),
    Case(
        "env-bad-name",
        "collector:\n  spool_dir: '${1SPOOL}'\n",
        "collector.spool_dir (line 2): an unfinished ${ reference",
    ),
    Case(
        "env-secret-into-int",
        "collector:\n  concurrency: ${QKDTEL_CORPUS_SECRET}\n",
        "collector.concurrency (line 2)",
    ),
    Case(
        "env-secret-into-sink-type",
        "sinks:\n  - {type: '${QKDTEL_CORPUS_SECRET}', bucket: b}\n",
        "sinks[0] (line 2)",
    ),
    Case(
        "env-secret-into-literal",
        "collector:\n  overflow: ${QKDTEL_CORPUS_SECRET}\n",
        "collector.overflow (line 2)",
    ),
    Case(
        "env-secret-into-name",
        "devices:\n  - {name: '${QKDTEL_CORPUS_SECRET} x', driver: qkd_snmp}\n",
        "devices[0].name (line 2)",
    ),
    Case(
        "env-port-word",
        "traps:\n  listen: 127.0.0.1:${QKDTEL_CORPUS_PORT}\n",
        "traps.listen (line 2)",
    ),
    # --- duplicates --------------------------------------------------------------------------
    Case(
        "dup-top-level-key",
        "collector: {}\ndevices: []\ncollector: {}\n",
        "line 3, column 1: not valid YAML: collector given twice (first at line 1, column 1)",
    ),
    Case(
        "dup-secret-key",
        f"sinks:\n  - type: influxdb_v1\n    password: {SECRET}-one\n    password: {SECRET}-two\n",
        "line 4, column 5: not valid YAML: password given twice (first at line 3",
    ),
    Case(
        "dup-tag-key",
        "devices:\n  - name: x\n    driver: qkd_snmp\n    tags: {node: a, node: b}\n",
        "line 4, column 21",
    ),
    Case(
        "dup-device-names",
        f"devices:\n  - {SNMP}}}\n  - {SNMP}}}\n",
        "devices[1].name (line 3): names must be unique; devices[0] has this name too",
    ),
    Case(
        "dup-sink-names-default",
        f"sinks:\n  - {V1}}}\n  - {V1}, password: {SECRET}}}\n",
        "sinks[1].name (line 3): names must be unique",
    ),
    # --- unicode and bytes -------------------------------------------------------------------
    Case(
        "bytes-invalid-utf8-in-secret",
        f"sinks:\n  - {V1}, password: {SECRET}".encode() + b"\xff\xfe}\n",
        "line 2: not UTF-8 text",
    ),
    Case(
        "bytes-latin1-device-name",
        "devices:\n  - {name: Legan\xe9s, driver: qkd_snmp}\n".encode("latin-1"),
        "line 2: not UTF-8 text",
    ),
    Case("bytes-utf16", "collector: {concurrency: 0}\n".encode("utf-16"), "line 1: not UTF-8 text"),
    Case(
        "bytes-nul",
        b"collector:\n  spool_dir: spool\x00dir\n",
        "line 2, column 19: not valid YAML: character #x0000",
    ),
    Case("bytes-bell", f"sinks:\n  - {V1}, password: {SECRET}\x07}}\n", "line 2, column"),
    Case(
        "bytes-bom-then-error",
        "\ufeffcollector:\n  concurrency: 0\n".encode(),
        "collector.concurrency (line 2)",
    ),
    Case(
        "unicode-surrogate-trap-host",
        'traps:\n  listen: "\\udcff:162"\n',
        "line 2, column 11: not valid YAML: a \\u escape of a lone surrogate",
    ),
    Case(
        "unicode-surrogate-ca-file",
        f'sinks:\n  - {V1}, password: {SECRET}, ca_file: "/etc/\\ud800.pem"}}\n',
        "line 2, column",
    ),
    Case(
        "unicode-trap-host",
        "traps:\n  listen: legan\u00e9s:162\n",
        "traps.listen (line 2): the host is neither an IPv4 address nor a host name",
    ),
    Case(
        "unicode-device-name",
        "devices:\n  - {name: nodo-Legan\u00e9s, driver: qkd_snmp}\n",
        "devices[0].name (line 2)",
    ),
    Case(
        "unicode-zero-width-key",
        "collector:\n  concurrency\u200b: 4\n",
        "(line 2): Extra inputs are not permitted",
    ),
]


COMMANDS = {"check": ["check"], "run": ["run", "--duration", "1"]}
"""`--duration`: a file that wrongly passes must not run for ever."""
ROOT = Path(__file__).resolve().parent.parent


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != UNSET} | ENV | {"PYTHONPATH": str(ROOT)}


@dataclass(frozen=True)
class Outcome:
    """One command on one file: where it ran and how it ended."""

    config: Path
    cwd: Path
    status: int
    stdout: str
    stderr: str


def _run_batch(jobs: list[dict], tmp: Path) -> list[int]:
    """Exit statuses of `python -m qkdtel.cli` runs, each a forked child (tests/cli_batch.py)."""
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run(
        [sys.executable, "-m", "tests.cli_batch", str(tmp / "jobs.json"), str(tmp / "out.json")],
        check=True,
        timeout=600,
        cwd=ROOT,
        env=_environment(),
    )
    return json.loads((tmp / "out.json").read_text())


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus written out, with the files some cases point at."""
    tmp = tmp_path_factory.mktemp("corpus")
    (tmp / "garbage.pem").write_text(f"-----BEGIN CERTIFICATE-----\n{SECRET}\n")
    (tmp / "latin1-secret").write_bytes(f"{SECRET}-".encode() + b"\xe4\xf1")
    for case in CORPUS:
        content = case.content
        if isinstance(content, str):
            content = content.replace("@TMP@", str(tmp)).encode()
        (tmp / f"{case.name}.yaml").write_bytes(content)
    return tmp


@pytest.fixture(scope="module")
def outcomes(corpus_dir: Path) -> dict[tuple[str, str], Outcome]:
    """(case, command) -> Outcome, for every case and both commands, each in an empty cwd."""
    jobs, keys = [], []
    for case in CORPUS:
        for command, argv in COMMANDS.items():
            run_dir = corpus_dir / "runs" / f"{case.name}-{command}"
            (run_dir / "cwd").mkdir(parents=True)
            config = corpus_dir / f"{case.name}.yaml"
            jobs.append(
                {
                    "argv": [*argv, "-c", str(config)],
                    "cwd": str(run_dir / "cwd"),
                    "stdout": str(run_dir / "stdout"),
                    "stderr": str(run_dir / "stderr"),
                }
            )
            keys.append((case.name, command))
    statuses = _run_batch(jobs, corpus_dir)
    return {
        key: Outcome(
            Path(job["argv"][-1]),
            Path(job["cwd"]),
            status,
            Path(job["stdout"]).read_text(encoding="utf-8"),
            Path(job["stderr"]).read_text(encoding="utf-8"),
        )
        for key, job, status in zip(keys, jobs, statuses, strict=True)
    }


def test_corpus_is_large_and_distinct():
    names = [case.name for case in CORPUS]
    assert len(names) == len(set(names)) >= 60
    assert len({case.content for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.name)
def test_check_and_run_refuse_with_path_and_line_and_no_secret(case: Case, outcomes) -> None:
    checked = outcomes[(case.name, "check")]
    for command in COMMANDS:
        done = outcomes[(case.name, command)]
        output = done.stdout + done.stderr
        assert done.status == 2, (command, output)
        assert f"{done.config}: invalid configuration" in done.stderr, (command, output)
        assert case.expect.replace("@TMP@", str(done.config.parent)) in done.stderr, output
        assert "Traceback" not in output, (command, output)
        for secret in (SECRET, SECRET_NUMBER):
            assert secret.lower() not in output.lower(), (command, secret, output)
        assert done.stderr == checked.stderr, "run must refuse with the words of check"
        assert list(done.cwd.iterdir()) == [], f"{command} created files for a refused file"


COLD = ["syntax-block-mapping-value", "bound-grace-inf", "path-spool-under-file", "bytes-nul"]


@pytest.mark.parametrize("name", COLD)
def test_forked_runs_match_a_cold_start(name: str, outcomes, corpus_dir: Path) -> None:
    """The batch's forked children end exactly as a cold `python -m qkdtel.cli` does."""
    for command, argv in COMMANDS.items():
        forked = outcomes[(name, command)]
        cold = subprocess.run(
            [sys.executable, "-m", "qkdtel.cli", *argv, "-c", str(forked.config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=forked.cwd,
            env=_environment(),
        )
        assert (cold.returncode, cold.stdout, cold.stderr) == (
            forked.status,
            forked.stdout,
            forked.stderr,
        )

"""The qkdtel MIBs: they compile (pysmi), parse strictly (Net-SNMP), agree with each other, and
say what docs/design/qkd-mibs.md, the contract with the driver, says they say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pysnmp.smi.error import MibNotFoundError

from qkdtel.mibs import (
    MIB_DIR,
    MODULES,
    SMI_MODULE,
    STANDARD_MODULES,
    MibCompileError,
    compile_mibs,
    compiled_dir,
    mib_builder,
    mib_files,
)

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design" / "qkd-mibs.md"
PREFIX = {  # the design doc's object-name prefix of each module
    "QKDTEL-IDQ-CERBERIS3-MIB": "cerb",
    "QKDTEL-TOSHIBA-QKD-MIB": "tqkd",
    "QKDTEL-HWDU-CVQKD-MIB": "hwcv",
    "QKDTEL-AIT-CVQKD-MIB": "aitcv",
}
STRICT = "-Pcw"  # strict comment syntax, warn about symbol conflicts


@pytest.fixture(scope="module")
def texts_builder():
    return mib_builder(load_texts=True)


def snmptranslate(mibdirs: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["snmptranslate", "-M", mibdirs, STRICT, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MIBS": "", "SNMPCONFPATH": "/nonexistent"},
    )


def test_the_package_ships_the_smi_and_the_four_vendor_modules():
    assert [p.stem for p in mib_files()] == sorted([SMI_MODULE, *MODULES])
    assert all(p.parent == MIB_DIR for p in mib_files())


def test_pysmi_compiles_every_mib(tmp_path):
    compile_mibs(tmp_path)
    built = sorted(p.stem for p in tmp_path.glob("*.py"))
    assert built == sorted([SMI_MODULE, *MODULES, *STANDARD_MODULES])


def test_a_broken_mib_is_reported_with_its_file_and_pysmis_message(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(MIB_DIR, source, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    broken = source / "QKDTEL-TOSHIBA-QKD-MIB.mib"
    broken.write_text(broken.read_text().replace('UNITS       "bits"', "UNITS bits", 1))
    with pytest.raises(MibCompileError) as info:
        compile_mibs(tmp_path / "out", source)
    message = str(info.value)
    assert str(broken) in message
    assert "Bad grammar" in message
    assert "QKDTEL-IDQ-CERBERIS3-MIB.mib" not in message  # only the culprit, not the bystanders


def test_compiled_dir_is_built_once_even_by_concurrent_processes(tmp_path):
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path)}  # as systemd's StateDirectory=
    code = "from qkdtel.mibs import compiled_dir; print(compiled_dir())"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    answers = {p.communicate(timeout=120)[0].strip() for p in processes}
    assert all(p.returncode == 0 for p in processes)
    (folder,) = answers
    assert Path(folder).parent == tmp_path / "mibs"
    assert [p.name for p in (tmp_path / "mibs").iterdir()] == [Path(folder).name]  # no debris
    assert {p.stem for p in Path(folder).glob("*.py")} == {SMI_MODULE, *MODULES, *STANDARD_MODULES}
    stamp = (Path(folder) / f"{MODULES[0]}.py").stat().st_mtime_ns
    again = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert again.stdout.strip() == folder
    assert (Path(folder) / f"{MODULES[0]}.py").stat().st_mtime_ns == stamp


def test_mibs_compile_into_the_collectors_state_directory_never_home(tmp_path, single_agent):
    agent = single_agent("toshiba")
    state = tmp_path / "state"
    config = tmp_path / "qkdtel.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "collector": {"spool_dir": str(state / "spool")},
                "sinks": [{"type": "file", "path": str(state / "lp")}],
                "devices": [agent.device],
            }
        )
    )
    # A HOME below a regular file: anything written there fails (even as root).
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "STATE_DIRECTORY")}
    env["HOME"] = "/etc/hostname/home"
    for command in (["check"], ["poll", "-f", "line"]):
        result = subprocess.run(
            [sys.executable, "-m", "qkdtel.cli", *command, "-c", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    assert "qkd_link," in result.stdout
    (compiled,) = (state / "mibs").glob("mibs-*")
    assert {p.stem for p in compiled.glob("*.py")} == {SMI_MODULE, *MODULES, *STANDARD_MODULES}


def test_mib_builder_loads_every_module():
    builder = mib_builder()
    for module in (SMI_MODULE, *MODULES):
        assert module in builder.mibSymbols
    assert compiled_dir().is_dir()


def test_an_unknown_module_fails_at_once_instead_of_going_to_the_network():
    builder = mib_builder()
    started = time.monotonic()
    with pytest.raises(MibNotFoundError, match="NO-SUCH-MIB"):
        builder.load_modules("NO-SUCH-MIB")
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("module", [SMI_MODULE, *MODULES])
def test_net_snmp_parses_each_module_without_a_warning(module, netsnmp_mibdirs):
    result = snmptranslate(netsnmp_mibdirs, "-m", module, "-Tz")
    assert result.returncode == 0
    assert result.stderr == ""
    assert '"qkdtelModels"\t\t\t"1.3.6.1.4.1.32473.42"' in result.stdout


@pytest.mark.parametrize("module", MODULES)
def test_every_compiled_name_has_net_snmps_oid(module, netsnmp_mibdirs):
    """pysmi's and Net-SNMP's readings of the same file agree on every name and number."""
    listing = snmptranslate(netsnmp_mibdirs, "-m", module, "-Tz").stdout
    netsnmp = dict(re.findall(r'^"([^"]+)"\s+"([\d.]+)"$', listing, re.MULTILINE))
    symbols = mib_builder().mibSymbols[module]
    compiled = {
        name: ".".join(map(str, obj.name))
        for name, obj in symbols.items()
        if isinstance(getattr(obj, "name", None), tuple) and name != "PYSNMP_MODULE_ID"
    }
    assert len(compiled) > 20
    for name, oid in compiled.items():
        assert netsnmp.get(name) == oid, name


@pytest.mark.parametrize(
    ("module", "name", "oid"),
    [
        ("QKDTEL-SMI", "qkdtelModels", "1.3.6.1.4.1.32473.42"),
        ("QKDTEL-IDQ-CERBERIS3-MIB", "cerbLinkQber", "1.3.6.1.4.1.32473.42.1.1.2.1.7"),
        ("QKDTEL-TOSHIBA-QKD-MIB", "tqkdLinkSecretBits", "1.3.6.1.4.1.32473.42.2.1.2.1.7"),
        ("QKDTEL-HWDU-CVQKD-MIB", "hwcvChannelDown", "1.3.6.1.4.1.32473.42.3.0.2"),
        ("QKDTEL-AIT-CVQKD-MIB", "aitcvBoardTemperature", "1.3.6.1.4.1.32473.42.4.1.1.1"),
    ],
)
def test_name_resolution_matches_snmptranslate(module, name, oid, netsnmp_mibdirs):
    result = snmptranslate(netsnmp_mibdirs, "-m", module, "-On", f"{module}::{name}")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "." + oid
    (obj,) = mib_builder().import_symbols(module, name)
    assert ".".join(map(str, obj.name)) == oid


@pytest.mark.parametrize("module", [SMI_MODULE, *MODULES])
def test_descriptions_say_the_mibs_are_modelled_under_the_documentation_enterprise(
    module, texts_builder
):
    symbols = texts_builder.mibSymbols[module]
    identity = next(o for o in symbols.values() if type(o).__name__ == "ModuleIdentity")
    description = " ".join(identity.getDescription().split())
    assert "MODELLED" in description
    assert "32473" in description
    assert "RFC 5612" in description


@pytest.mark.parametrize("module", MODULES)
def test_conformance_groups_cover_every_object_and_notification(module, texts_builder):
    symbols = texts_builder.mibSymbols[module]
    kinds: dict[str, list] = {}
    for obj in symbols.values():
        kinds.setdefault(type(obj).__name__, []).append(obj)
    accessible = {
        obj.label
        for kind in ("MibScalar", "MibTableColumn")
        for obj in kinds.get(kind, [])
        if obj.maxAccess != "not-accessible"
    }
    grouped = {name for g in kinds["ObjectGroup"] for _mod, name in g.getObjects()}
    assert grouped == accessible
    notifications = {n.label for n in kinds["NotificationType"]}
    assert len(notifications) == 3
    in_groups = {name for g in kinds["NotificationGroup"] for _m, name in g.getObjects()}
    assert in_groups == notifications
    assert len(kinds["ModuleCompliance"]) == 1


# ---- the design document is the contract -------------------------------------------------

_TYPES = ("DisplayString", "TruthValue", "Integer32", "Gauge32", "Unsigned32", "Counter64")


def _contract() -> dict[str, dict]:
    """Every object the design doc describes: type, units, enumeration, column number."""
    text = DESIGN.read_text(encoding="utf-8")
    objects: dict[str, dict] = {}
    pattern = r"`(\w+)`\s+(DisplayString|TruthValue|Integer32|Gauge32|Unsigned32|Counter64|INTEGER)"
    for match in re.finditer(pattern + r"([^`]*)", text):
        name, kind, rest = match.groups()
        units = re.search(r'UNITS\s+"([^"]+)"', rest)
        enum = re.match(r"\s*\{([^}]*)\}", rest) if kind == "INTEGER" else None
        objects[name] = {
            "type": "Integer32" if kind == "INTEGER" else kind,
            "units": units.group(1) if units else None,
            "enum": dict((n, int(v)) for n, v in re.findall(r"(\w+)\((\d+)\)", enum.group(1)))
            if enum
            else None,
            "not_accessible": "not-accessible" in rest.split("\n")[0],
        }
    for number, name in re.findall(r"^(\d+)\.\s+`(\w+)`", text, re.MULTILINE):
        objects[name]["column"] = int(number)
    for name, members in re.findall(r"`(\w+)`\s+OBJECTS\s*\{([^}]*)\}", text):
        objects[name] = {"objects": [m.strip() for m in members.split(",")]}
    return objects


def _base_type(syntax) -> str:
    return next(c.__name__ for c in type(syntax).__mro__ if c.__name__ in _TYPES)


def test_the_contract_lists_every_object_of_every_module(texts_builder):
    contract = _contract()
    for module, prefix in PREFIX.items():
        served = {
            name
            for name, obj in texts_builder.mibSymbols[module].items()
            if type(obj).__name__ in ("MibScalar", "MibTableColumn", "NotificationType")
        }
        described = {n for n in contract if n.startswith(prefix) and not n.endswith("MIB")}
        # AIT notifications are described in prose ("each OBJECTS {peer, id, <column>}")
        assert described <= served, module
        missing = served - described
        assert missing <= {"aitcvExcessNoiseHigh", "aitcvLinkDown", "aitcvKeyStoreEmpty"}


def test_types_units_enumerations_and_column_numbers_follow_the_contract(texts_builder):
    for name, spec in _contract().items():
        module = next(m for m, p in PREFIX.items() if name.startswith(p))
        (obj,) = texts_builder.import_symbols(module, name)
        if "objects" in spec:
            assert [n for _m, n in obj.getObjects()] == spec["objects"], name
            continue
        assert _base_type(obj.syntax) == spec["type"], name
        assert (obj.getUnits() or None) == spec["units"], name
        if spec["enum"] is not None:
            assert dict(obj.syntax.namedValues.items()) == spec["enum"], name
        if "column" in spec:
            assert obj.name[-1] == spec["column"], name
        expected = "not-accessible" if spec["not_accessible"] else "read-only"
        assert obj.maxAccess == expected, name


def test_ait_notifications_carry_peer_link_and_the_relevant_column(texts_builder):
    expected = {
        "aitcvExcessNoiseHigh": "aitcvLinkExcessNoise",
        "aitcvLinkDown": "aitcvLinkOperStatus",
        "aitcvKeyStoreEmpty": "aitcvLinkKeyStoreFill",
    }
    for notification, column in expected.items():
        (obj,) = texts_builder.import_symbols("QKDTEL-AIT-CVQKD-MIB", notification)
        assert [n for _m, n in obj.getObjects()] == ["aitcvLinkPeer", "aitcvLinkId", column]

"""The qkdtel QKD-module MIBs (see docs/design/qkd-mibs.md) and their compiled pysnmp form.

Agents (the simulators) and managers (the qkd_snmp driver) both work from the same `.mib`
files: `compiled_dir()` turns them into pysnmp modules once per content version, and
`mib_builder()` / `load_into()` give a pysnmp `MibBuilder` with every qkdtel module loaded,
so no OID is ever typed by hand.

Where the compiled modules go (never the user's home, which a service account may not have,
or have read-only): `<state>/mibs`, the state directory being the one `use_state_dir` was
given (the collector gives its spool_dir's parent, e.g. /var/lib/qkdtel), else systemd's
`$STATE_DIRECTORY`, else a directory of this user's own under the system's temporary folder
(the simulators, a script). The compiled modules are Python code that pysnmp imports, so that
last one must be private: created 0700 and used only if this user owns it and nobody else
can write to it; otherwise a fresh private one is made for this process.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path

from pysnmp.smi.builder import MibBuilder

from qkdtel.mibs.smiv2_core import CORE_MODULES, read_core_module

MIB_DIR: Path = Path(__file__).resolve().parent
"""Folder of the `.mib` files (the package folder, in editable and wheel installs alike)."""

SMI_MODULE = "QKDTEL-SMI"
MODULES: tuple[str, ...] = (
    "QKDTEL-IDQ-CERBERIS3-MIB",
    "QKDTEL-TOSHIBA-QKD-MIB",
    "QKDTEL-HWDU-CVQKD-MIB",
    "QKDTEL-AIT-CVQKD-MIB",
    "QKDTEL-ENCRYPTOR-MIB",
)
"""The four QKD vendor-family modules and the encryptor module, in the order of their arcs
under qkdtelModels."""

STANDARD_MODULES: tuple[str, ...] = ("IF-MIB",)
"""Standard modules compiled from the stand-ins (smiv2_core.py): a qkdtel module imports them."""


_BUILT = ("compiled", "untouched")  # untouched: a base module pysnmp ships precompiled


class MibCompileError(RuntimeError):
    """A qkdtel MIB did not compile; the message names the file and pysmi's complaint."""


def mib_files(source_dir: Path = MIB_DIR) -> list[Path]:
    """Every `.mib` file in `source_dir` (by default the ones shipped here), sorted by name."""
    return sorted(source_dir.glob("*.mib"))


def _content_key() -> str:
    """Hash of the MIB texts and of the tool versions whose output the cache holds."""
    import pysmi
    import pysnmp

    digest = hashlib.sha256(f"pysmi {pysmi.__version__} pysnmp {pysnmp.__version__}".encode())
    for path in mib_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for name, text in sorted(CORE_MODULES.items()):  # IF-MIB's stand-in is compiled too
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:16]


_state_dir: Path | None = None


def use_state_dir(path: Path) -> None:
    """Compile into `path`/mibs from now on: the caller's state directory (the collector
    gives its spool_dir's parent), which the operator made writable for it."""
    global _state_dir
    _state_dir = Path(path)


def _cache_root() -> Path:
    """Where compiled modules are kept (see the module's docstring for the order)."""
    if _state_dir is not None:
        return _state_dir / "mibs"
    systemd = os.environ.get("STATE_DIRECTORY")  # StateDirectory=: a colon-separated list
    if systemd:
        return Path(systemd.split(":")[0]) / "mibs"
    return _private_temp_root()


@functools.cache
def _private_temp_root() -> Path:
    """`<tmp>/qkdtel-mibs-<uid>` if it is this user's private directory, else a new private
    one for this process (removed at exit): nobody else may plant code where pysnmp imports."""
    shared = Path(tempfile.gettempdir()) / f"qkdtel-mibs-{os.getuid()}"
    try:
        shared.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return _process_temp_root()
    info = shared.lstat()
    private = stat.S_ISDIR(info.st_mode) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return shared if private and info.st_uid == os.getuid() else _process_temp_root()


def _process_temp_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="qkdtel-mibs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def local_compiler(destination: Path, source_dir: Path = MIB_DIR):
    """A pysmi compiler that reads only local sources: the .mib folder and the SMIv2 core.

    pysnmp's own default compiler would fetch unknown modules over HTTP; this one never does.
    """
    from pysmi.codegen import PySnmpCodeGen
    from pysmi.compiler import MibCompiler
    from pysmi.parser import SmiV2Parser
    from pysmi.reader import CallbackReader, FileReader
    from pysmi.searcher import PyFileSearcher, PyPackageSearcher, StubSearcher
    from pysmi.writer import PyFileWriter

    compiler = MibCompiler(SmiV2Parser(), PySnmpCodeGen(), PyFileWriter(str(destination)))
    compiler.add_sources(FileReader(str(source_dir), recursive=False))
    compiler.add_sources(CallbackReader(read_core_module))
    compiler.add_searchers(
        PyFileSearcher(str(destination)),
        PyPackageSearcher("pysnmp.smi.mibs"),
        StubSearcher(*PySnmpCodeGen.baseMibs),
    )
    return compiler


def compile_mibs(destination: Path, source_dir: Path = MIB_DIR) -> None:
    """Compile every `.mib` file of `source_dir` into pysnmp modules in `destination`.

    Raise `MibCompileError` naming each failing file and pysmi's message.
    """
    compiler = local_compiler(destination, source_dir)
    names = [path.stem for path in mib_files(source_dir)]
    results = compiler.compile(*names, genTexts=True, rebuild=True)
    broken = {name: status for name, status in results.items() if status not in _BUILT}
    if broken:
        # Report the causes; modules merely skipped because another failed carry no error.
        causes = [
            f"{_where(source_dir, name)}: {status}: {status.error}"
            for name, status in sorted(broken.items())
            if getattr(status, "error", None) is not None
        ] or [f"{_where(source_dir, name)}: {status}" for name, status in sorted(broken.items())]
        listing = "\n  ".join(causes)
        raise MibCompileError(f"pysmi could not compile the qkdtel MIBs:\n  {listing}")


def _where(source_dir: Path, module: str) -> str:
    source = source_dir / f"{module}.mib"
    return str(source) if source.exists() else f"module {module} (no file {source.name})"


def compiled_dir() -> Path:
    """Folder of the compiled pysnmp modules, compiling them on first use.

    The cache is keyed by a hash of the MIB texts, so an edited MIB is recompiled and an
    unchanged one never is. Two processes compiling at once each build in a private temporary
    folder and atomically rename it into place; the loser discards its copy.
    """
    root = _cache_root()
    final = root / f"mibs-{_content_key()}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".mibs-", dir=root))
    try:
        compile_mibs(scratch)
        try:
            scratch.rename(final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return final


class _OnDemandCompiler:
    """A `local_compiler` built on first use: pysmi's parser takes most of a second to build,
    and a builder usually never compiles anything (every qkdtel module is precompiled)."""

    def __init__(self, destination: Path):
        self._destination = destination

    def compile(self, *names: str, **options):
        return _shared_compiler(self._destination).compile(*names, **options)


@functools.cache
def _shared_compiler(destination: Path):
    return local_compiler(destination)


def load_into(builder: MibBuilder) -> MibBuilder:
    """Add the compiled qkdtel modules to `builder` (e.g. an SnmpEngine's) and load them all.

    The builder also gets a local-only MIB compiler, so that pysnmp (e.g. its high-level API
    resolving a name) never attaches its default one, which would try HTTP.
    """
    folder = compiled_dir()
    builder.set_mib_compiler(_OnDemandCompiler(folder), str(folder))
    with warnings.catch_warnings():
        # pysmi 2.0 writes the camelCase API that pysnmp 7 still runs but deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        builder.load_modules(SMI_MODULE, *MODULES)
    return builder


def mib_builder(load_texts: bool = False) -> MibBuilder:
    """A fresh pysnmp `MibBuilder` with every qkdtel module loaded (texts too if asked)."""
    builder = MibBuilder()
    builder.loadTexts = load_texts
    return load_into(builder)

"""Check the import layering (pyproject.toml, [tool.importlinter]) with import-linter.

import-linter finds a package's modules on disk under the package's folder, but qkdtel maps
its subpackages onto several top-level folders (collector/, sdk/, drivers/, ...; see
package-dir), which an editable install resolves with an import hook it cannot see. So this
lays the sources out as installed, as symbolic links in a scratch folder (nothing is built or
written in the checkout), and runs `lint-imports` on that tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def link_tree(target: Path) -> None:
    """Symlink every module of every package in `package-dir` to its installed path."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = project["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dir.items():
        source = ROOT / folder
        for path in source.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            installed = target / package.replace(".", "/") / path.relative_to(source)
            installed.parent.mkdir(parents=True, exist_ok=True)
            installed.symlink_to(path)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="qkdtel-layers-") as scratch:
        link_tree(Path(scratch))
        env = {**os.environ, "PYTHONPATH": scratch}
        linter = Path(sys.executable).with_name("lint-imports")
        command = [str(linter), "--no-cache", str(ROOT / "pyproject.toml")]
        return subprocess.run(command, cwd=scratch, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())

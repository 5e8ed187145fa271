"""Regenerate packaging/snmp_exporter/snmp.yml from generator.yml and the MIBs in mibs/.

    python scripts/snmp_exporter_config.py [--check]

Why a script: Prometheus' generator (Debian: prometheus-snmp-generator) reads MIBs through
Net-SNMP, which needs the SMIv2 core modules (SNMPv2-SMI, -TC, -CONF) that Debian does not ship
(they are in snmp-mibs-downloader, non-free); qkdtel keeps them in `qkdtel.mibs.smiv2_core`.
This writes them to a temporary folder, points MIBDIRS at it and mibs/, and runs the generator.
`--check`: exit 1 if the committed snmp.yml differs from what the generator makes now.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from qkdtel.mibs import MIB_DIR
from qkdtel.mibs.smiv2_core import write_core_modules

HERE = Path(__file__).resolve().parent.parent / "packaging" / "snmp_exporter"
GENERATOR = "prometheus-snmp-generator"


def generate(generator_yml: Path, output: Path) -> None:
    """Run the generator on `generator_yml` with qkdtel's MIBs; write `output`."""
    exe = shutil.which(GENERATOR)
    if exe is None:
        raise SystemExit(f"{GENERATOR} not found: apt-get install prometheus-snmp-exporter")
    with tempfile.TemporaryDirectory(prefix="qkdtel-snmp-gen-") as tmp:
        work = Path(tmp)
        core = write_core_modules(work / "core")
        shutil.copy(generator_yml, work / "generator.yml")
        env = {**os.environ, "MIBDIRS": f"{core}:{MIB_DIR}", "MIBS": "ALL"}
        result = subprocess.run(
            [exe, "--fail-on-parse-errors", "generate", "-o", str(work / "snmp.yml")],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise SystemExit(f"{GENERATOR} failed:\n{result.stderr}")
        shutil.copy(work / "snmp.yml", output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    committed = HERE / "snmp.yml"
    if not args.check:
        generate(HERE / "generator.yml", committed)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "snmp.yml"
        generate(HERE / "generator.yml", fresh)
        if fresh.read_text() != committed.read_text():
            print(f"{committed} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stand-ins for the three SMIv2 core modules, for MIB *parsers* only.

Why this exists: both pysmi (to build its symbol table) and Net-SNMP's `snmptranslate`/`snmpwalk`
(to resolve imports) need the ASN.1 text of SNMPv2-SMI, SNMPv2-TC and SNMPv2-CONF, but Debian
ships that text only in the non-free `snmp-mibs-downloader` (which fetches it from the network)
and pysmi 2.0 bundles none. These stand-ins define just what the qkdtel MIBs import: the OID
nodes down to `enterprises` and the two textual conventions used. The SMI macros and base types
are built into both parsers. They never reach an agent or a manager: compiled code imports the
real modules precompiled in pysnmp.

They are kept here rather than as files beside the .mib files so that `snmpwalk -M +MIB_DIR`
never shadows a system's complete copies with these partial ones.
"""

from __future__ import annotations

from pathlib import Path

from qkdtel.mibs.if_mib_subset import IF_MIB

CORE_MODULES: dict[str, str] = {
    "SNMPv2-SMI": """\
SNMPv2-SMI DEFINITIONS ::= BEGIN

-- qkdtel stand-in: only the nodes the qkdtel MIBs need.
org            OBJECT IDENTIFIER ::= { iso 3 }
dod            OBJECT IDENTIFIER ::= { org 6 }
internet       OBJECT IDENTIFIER ::= { dod 1 }
mgmt           OBJECT IDENTIFIER ::= { internet 2 }
mib-2          OBJECT IDENTIFIER ::= { mgmt 1 }
private        OBJECT IDENTIFIER ::= { internet 4 }
enterprises    OBJECT IDENTIFIER ::= { private 1 }

END
""",
    "SNMPv2-TC": """\
SNMPv2-TC DEFINITIONS ::= BEGIN

-- qkdtel stand-in: only the textual conventions the qkdtel MIBs use.
DisplayString ::= TEXTUAL-CONVENTION
    DISPLAY-HINT "255a"
    STATUS       current
    DESCRIPTION  "Printable text."
    SYNTAX       OCTET STRING (SIZE (0..255))

TruthValue ::= TEXTUAL-CONVENTION
    STATUS       current
    DESCRIPTION  "A boolean value."
    SYNTAX       INTEGER { true(1), false(2) }

END
""",
    "SNMPv2-CONF": """\
SNMPv2-CONF DEFINITIONS ::= BEGIN

-- qkdtel stand-in: the conformance macros are built into the parsers.

END
""",
}


CORE_MODULES["IF-MIB"] = IF_MIB  # a runtime module too: see if_mib_subset.py


def read_core_module(name: str, _context: object = None) -> str | None:
    """Text of a core stand-in module, or None; shaped as a pysmi `CallbackReader` callback."""
    return CORE_MODULES.get(name)


def write_core_modules(directory: Path) -> Path:
    """Write the stand-ins as `<MODULE>.txt` into `directory` (for Net-SNMP's `-M`); return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in CORE_MODULES.items():
        (directory / f"{name}.txt").write_text(text, encoding="ascii")
    return directory

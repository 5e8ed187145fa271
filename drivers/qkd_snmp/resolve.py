"""Profiles bound to the compiled MIBs: object names -> OIDs and syntaxes, once per process.

Resolution goes through pysnmp's MibBuilder (`import_symbols`), so every OID comes from the
`.mib` files and a profile naming an object the MIB lacks fails at start-up, not mid-poll.
The result is plain tuples and dicts: a poll then never touches the MIB machinery again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from pyasn1.type import univ

from qkdtel.drivers.qkd_snmp.ber import INT32, UNSIGNED64_MAX
from qkdtel.drivers.qkd_snmp.profiles import PROFILES, Out, SnmpProfile
from qkdtel.sdk import Malformed

Oid = tuple[int, ...]


@dataclass(frozen=True)
class ObjectInfo:
    """What the driver needs to know about one MIB object."""

    name: str
    oid: Oid
    text: bool  # an OCTET STRING syntax (DisplayString), else an integer one
    enum: Mapping[int, str] | None  # named values of an enumeration

    def decode(self, value: Any, where: str) -> int | str:
        """Plain wire value (see ber.py) -> int, str, or enumeration name.

        `Malformed` if it does not fit the MIB: a string for an integer, an integer for a
        string, text that is not UTF-8, a number outside the enumeration.
        """
        if self.text:
            if type(value) is not bytes:
                raise Malformed(f"{where}: expected a string, got {_show(value)}")
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Malformed(f"{where}: not UTF-8 text: {_show(value)}") from exc
        if type(value) is not int:
            raise Malformed(f"{where}: expected an integer, got {_show(value)}")
        if not INT32[0] <= value <= UNSIGNED64_MAX:  # what no SNMP type carries
            raise Malformed(f"{where}: {_show(value)} is outside every SNMP integer type")
        if self.enum is None:
            return value
        try:
            return self.enum[value]
        except KeyError as exc:
            raise Malformed(f"{where}: {value} is not a value of the enumeration") from exc


def _show(value: Any) -> str:
    """A device value for an error message: its kind and at most 40 characters."""
    if isinstance(value, bytes):
        kind, shown = "string", repr(value[:64].decode("utf-8", "replace"))
    elif isinstance(value, int) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"  # str() of a huge int is itself an attack
    else:
        kind, shown = type(value).__name__, repr(value)
    return f"{kind} {shown if len(shown) <= 40 else shown[:37] + '...'}"


@dataclass(frozen=True)
class Notification:
    """A NOTIFICATION-TYPE: its name and the objects it carries."""

    name: str
    oid: Oid
    objects: tuple[str, ...]


@dataclass(frozen=True)
class Resolved:
    """A profile with every object it names resolved against the compiled MIB."""

    profile: SnmpProfile
    objects: Mapping[str, ObjectInfo]
    table_oid: Oid
    scalar_oids: tuple[Oid, ...]  # instances (.0), in `profile.scalar_names` order
    column_oids: tuple[Oid, ...]  # in `profile.column_names` order
    notifications: Mapping[Oid, Notification]

    def convert(
        self, outs: Iterable[Out], values: Mapping[str, int | str], where: str
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """Apply profile outputs to decoded values -> (tags, fields); junk -> `Malformed`.

        Outputs whose source objects are absent are left out, as are outputs whose converter
        says "unknown" (None).
        """
        tags: dict[str, str] = {}
        fields: dict[str, Any] = {}
        for out in outs:
            try:
                args = [values[source] for source in out.sources]
            except KeyError:
                continue
            try:
                result = out.convert(*args)
            except (ValueError, KeyError, TypeError, ZeroDivisionError, OverflowError) as exc:
                shown = ", ".join(repr(a)[:40] for a in args)
                raise Malformed(
                    f"{out.sources[0]}{where}: cannot read {shown} as {out.name}"
                ) from exc
            if result is None:
                continue
            if out.range is not None and not out.range[0] <= result <= out.range[1]:
                raise Malformed(
                    f"{out.sources[0]}{where}: {out.name} {result:g} is out of range "
                    f"{out.range[0]:g}..{out.range[1]:g}"
                )
            (tags if out.tag else fields)[out.name] = result
        return tags, fields


def _info(symbol: Any, name: str) -> ObjectInfo:
    syntax = symbol.syntax
    named = dict(syntax.namedValues.items()) if isinstance(syntax, univ.Integer) else {}
    return ObjectInfo(
        name=name,
        oid=tuple(symbol.name),
        text=isinstance(syntax, univ.OctetString),
        enum={number: label for label, number in named.items()} or None,
    )


@cache
def _builder() -> Any:
    from qkdtel.mibs import mib_builder

    return mib_builder()


@cache
def resolve(profile_name: str) -> Resolved:
    """Resolve a profile (cached: every device of a family shares one resolution)."""
    profile = PROFILES[profile_name]
    builder = _builder()
    names = (*profile.scalar_names, *profile.column_names)
    symbols = builder.import_symbols(profile.mib, profile.table, *names)
    table, *objects = symbols
    infos = {name: _info(symbol, name) for name, symbol in zip(names, objects, strict=True)}

    notifications: dict[Oid, Notification] = {}
    for name in profile.notifications:
        (symbol,) = builder.import_symbols(profile.mib, name)
        carried = tuple(obj for _, obj in symbol.getObjects())
        for mib, obj in symbol.getObjects():
            if obj not in infos:
                (carried_symbol,) = builder.import_symbols(mib, obj)
                infos[obj] = _info(carried_symbol, obj)
        notifications[tuple(symbol.name)] = Notification(name, tuple(symbol.name), carried)

    return Resolved(
        profile=profile,
        objects=infos,
        table_oid=tuple(table.name),
        scalar_oids=tuple((*infos[n].oid, 0) for n in profile.scalar_names),
        column_oids=tuple(infos[n].oid for n in profile.column_names),
        notifications=notifications,
    )


def object_infos(module: str, *names: str) -> dict[str, ObjectInfo]:
    """Objects of any compiled module by name, for drivers that read MIBs without an
    `SnmpProfile` (the encryptors: IF-MIB and QKDTEL-ENCRYPTOR-MIB)."""
    symbols = _builder().import_symbols(module, *names)
    return {name: _info(symbol, name) for name, symbol in zip(names, symbols, strict=True)}


def notification_info(module: str, name: str) -> tuple[Oid, tuple[str, ...]]:
    """A NOTIFICATION-TYPE of any compiled module: its OID and the objects it carries."""
    (symbol,) = _builder().import_symbols(module, name)
    return tuple(symbol.name), tuple(obj for _, obj in symbol.getObjects())

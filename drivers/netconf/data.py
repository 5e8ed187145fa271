"""Reading a reply's <data>: the one check both NETCONF drivers make before trusting it."""

from __future__ import annotations

from lxml import etree

from qkdtel.sdk import Malformed


def find_container(
    data: etree._Element | None, namespace: str, name: str, where: str
) -> etree._Element:
    """The top-level container `name` of `namespace` in a reply's <data>; `Malformed` naming
    what the reply holds instead (a wrong namespace, nothing) so the operator sees why."""
    if data is None:
        raise Malformed(f"{where}: the reply has no data")
    tag = f"{{{namespace}}}{name}"
    found = data if data.tag == tag else data.find(tag)
    if found is None:
        others = sorted({etree.QName(e).namespace or "" for e in data if isinstance(e.tag, str)})
        seen = f" (it has {', '.join(others)})" if others else " (it is empty)"
        raise Malformed(f"{where}: no {name} in namespace {namespace} in the reply{seen}")
    return found

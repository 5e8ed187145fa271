"""Split one inventory between several collectors, with no coordinator of our own.

Rendezvous (highest-random-weight) hashing: every shard scores every device name with a stable
hash and a device belongs to the shard with the highest score. Each collector computes the same
answer from the same file, so every device is polled by exactly one shard; going from N to N+1
shards moves only the devices the new shard now wins (about 1/(N+1) of them), the others stay
where they were. The hash is BLAKE2b, never Python's `hash()`, which is salted per process.

A shard keeps its own spool: `spool_dir` gets the suffix `.shard-<index>` (the index only, so a
shard that restarts with another count still finds and delivers what it had spooled).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from qkdtel.config import LoadedConfig, ShardSettings

MAX_SHARDS = 1024

_SHARD_ARG = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_ORDINAL = re.compile(r"-(\d+)$")


class ShardError(ValueError):
    """A shard given on the command line or found in the host name is not usable."""


def _score(shard: int, name: str) -> int:
    """The weight of `name` on `shard`: 8 bytes of BLAKE2b over both, stable across processes."""
    digest = hashlib.blake2b(f"{shard}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(name: str, count: int) -> int:
    """The shard (0..count-1) that polls the device `name` when there are `count` shards."""
    return max(range(count), key=lambda shard: _score(shard, name))


def owned(names: Iterable[str], index: int, count: int) -> list[str]:
    """The names shard `index` of `count` polls, in their given order."""
    return [name for name in names if owner(name, count) == index]


def check(index: int, count: int) -> None:
    """Refuse a shard that cannot exist (the message names what is wrong)."""
    if not 1 <= count <= MAX_SHARDS:
        raise ShardError(f"shard count {count}: must be 1 to {MAX_SHARDS}")
    if not 0 <= index < count:
        raise ShardError(f"shard index {index}: must be 0 to {count - 1} (of {count} shards)")


def parse(text: str) -> tuple[int, int]:
    """`--shard 1/4` -> (1, 4): index counted from 0, then the number of shards."""
    match = _SHARD_ARG.match(text)
    if match is None:
        raise ShardError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/4")
    index, count = int(match[1]), int(match[2])
    check(index, count)
    return index, count


def from_hostname(hostname: str, count: int) -> tuple[int, int]:
    """The shard of a Kubernetes StatefulSet pod: its ordinal is the number ending its name
    (`qkdtel-2` -> 2), its count the StatefulSet's replicas (given, the pod cannot see it)."""
    match = _ORDINAL.search(hostname)
    if match is None:
        raise ShardError(f"host name {hostname!r} does not end in -<ordinal> (a StatefulSet pod)")
    index = int(match[1])
    check(index, count)
    return index, count


def spool_dir(base: Path, index: int) -> Path:
    """Shard `index`'s own spool, beside the unsharded one (`spool` -> `spool.shard-2`)."""
    return base.with_name(f"{base.name}.shard-{index}")


def select(loaded: LoadedConfig, index: int, count: int) -> LoadedConfig:
    """`loaded` as shard `index` of `count` sees it: only its devices (the others `unpolled`,
    for its listeners to attribute notifications by), its own spool, and the shard recorded in
    `collector.shard` (the daemon tags its self-telemetry with it)."""
    check(index, count)
    mine = set(owned((d.config.name for d in loaded.devices), index, count))
    settings = loaded.config.collector.model_copy(
        update={
            "shard": ShardSettings(index=index, count=count),
            "spool_dir": spool_dir(loaded.config.collector.spool_dir, index),
        }
    )
    return dataclasses.replace(
        loaded,
        config=loaded.config.model_copy(update={"collector": settings}),
        devices=[d for d in loaded.devices if d.config.name in mine],
        unpolled=[d for d in loaded.devices if d.config.name not in mine],
    )

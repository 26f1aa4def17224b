"""Sharding a fleet over replicas by rendezvous hashing of target names: each replica checks only its own."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

ENV = "PARTKEY_SHARD"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def _weight(target: str, shard: int) -> int:
    """A stable pseudo-random weight of (target, shard); the same on every replica, version and platform."""
    digest = hashlib.blake2b(f"{shard}\x00{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(target: str, total: int) -> int:
    """The shard (0-based) that owns a target: the highest weight wins (rendezvous hashing).

    Going from n to n+1 shards moves only the targets the new shard now wins, about 1/(n+1) of them.
    """
    return max(range(total), key=lambda shard: _weight(target, shard))


def owned(targets: Iterable[str], index: int, total: int) -> list[str]:
    """The targets shard `index` of `total` owns, in the order given."""
    return [name for name in targets if owner(name, total) == index]


def parse_spec(text: str) -> tuple[int, int]:
    """(index, total) from 'i/n' as in PARTKEY_SHARD=1/4; raise ValueError naming the problem."""
    match = _SPEC.match(text)
    if match is None:
        raise ValueError(f"{ENV} must look like INDEX/TOTAL such as 0/4, got {text!r}")
    index, total = int(match.group(1)), int(match.group(2))
    if total < 1 or index >= total:
        raise ValueError(f"{ENV}={text}: INDEX must be between 0 and TOTAL-1, and TOTAL at least 1")
    return index, total

"""Immutable check results and the store that swaps them in whole; scrapes only read from here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, KeysView, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from exporter.scan_target import ScanSource

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


def _target_of(key: Any) -> Any:
    """The target a snapshot key belongs to: the key itself, or its first element."""
    return key[0] if isinstance(key, tuple) and key else key


class ByTarget(Mapping[K, V]):
    """An immutable mapping grouped by target: replacing one target's entries copies only that target's part.

    With one flat dict per series kind, every published result copied the whole fleet's entries (about 1,000
    results and as many other entries at 200 targets), and every per-target encode filtered them all again. Here
    a change copies the target index (one pointer per target) and that target's own entries; a lookup goes
    through the target's part. Iteration is target by target, each target's entries in insertion order.
    """

    __slots__ = ("_length", "_parts")

    def __init__(self, parts: Mapping[Any, Mapping[K, V]] | None = None, *, _length: int | None = None) -> None:
        self._parts: dict[Any, Mapping[K, V]] = {t: p for t, p in (parts or {}).items() if p}
        self._length = sum(len(p) for p in self._parts.values()) if _length is None else _length

    @classmethod
    def of(cls, mapping: Mapping[K, V]) -> ByTarget[K, V]:
        """MAPPING grouped by target (itself when it already is)."""
        if isinstance(mapping, ByTarget):
            return mapping
        parts: dict[Any, dict[K, V]] = {}
        for key, value in mapping.items():
            parts.setdefault(_target_of(key), {})[key] = value
        return cls(parts)

    def part(self, target: str) -> Mapping[K, V]:
        """TARGET's entries (read-only)."""
        return MappingProxyType(self._parts.get(target) or {})

    def only(self, target: str) -> ByTarget[K, V]:
        """A mapping of TARGET's entries alone (shares them: nothing is copied)."""
        part = self._parts.get(target)
        return ByTarget({target: part} if part else None, _length=len(part) if part else 0)

    def replaced(self, target: str, part: Mapping[K, V]) -> ByTarget[K, V]:
        """A new mapping with TARGET's entries replaced by PART (which the caller must not change afterwards)."""
        parts = dict(self._parts)
        length = self._length - len(parts.pop(target, ()))
        if part:
            parts[target] = part
        return ByTarget(parts, _length=length + len(part))

    def without(self, targets: set[str]) -> ByTarget[K, V]:
        """A new mapping without these targets' entries."""
        return ByTarget({t: p for t, p in self._parts.items() if t not in targets})

    def targets(self) -> KeysView[Any]:
        """The targets that have entries."""
        return self._parts.keys()

    def __getitem__(self, key: K) -> V:
        part = self._parts.get(_target_of(key))
        if part is None:
            raise KeyError(key)
        return part[key]

    def __contains__(self, key: object) -> bool:
        part = self._parts.get(_target_of(key))
        return part is not None and key in part

    def __iter__(self) -> Iterator[K]:
        for part in self._parts.values():
            yield from part

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"ByTarget({dict(self.items())!r})"


# Probe latency buckets in seconds: a local INSERT takes ~0.1-1 ms, a contended one much longer.
PROBE_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class CheckResult:
    """The latest run of one check on one table; payload is from the last successful run."""

    target: str
    table: str
    check: str
    success: bool
    duration_seconds: float
    finished_at: float
    last_success_at: float | None
    interval_seconds: float
    error: str | None = None
    payload: Any = None
    scan: ScanSource | None = None  # where the payload was read when on the target's scan_dsn, with the replay lag


@dataclass(frozen=True)
class HistogramState:
    """Cumulative bucket counts of the probe latency histogram."""

    buckets: tuple[int, ...] = (0,) * len(PROBE_BUCKETS)
    count: int = 0
    total: float = 0.0
    failures: int = 0

    def observe(self, values: list[float], failures: int) -> HistogramState:
        """A new state with the values added."""
        buckets = list(self.buckets)
        for value in values:
            for index, bound in enumerate(PROBE_BUCKETS):
                if value <= bound:
                    buckets[index] += 1
        return HistogramState(
            buckets=tuple(buckets),
            count=self.count + len(values),
            total=self.total + sum(values),
            failures=self.failures + failures,
        )


@dataclass(frozen=True)
class Snapshot:
    """Everything /metrics shows, at one instant. Every mapping is keyed by target first (ByTarget)."""

    results: Mapping[tuple[str, str, str], CheckResult] = field(default_factory=dict)
    rows_verified: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    probe_histograms: Mapping[tuple[str, str], HistogramState] = field(default_factory=dict)
    target_up: Mapping[str, bool] = field(default_factory=dict)
    target_versions: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    # Bumped on every publish for a target: /metrics re-encodes only the targets whose generation moved.
    generations: Mapping[str, int] = field(default_factory=dict)
    # The last discovery run of each `tables: auto` target (exporter.discovery.DiscoveryResult).
    discoveries: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Whatever mappings it was built from (tests and benches pass dicts), it holds them grouped by target.
        for item in fields(self):
            object.__setattr__(self, item.name, ByTarget.of(getattr(self, item.name)))

    def for_target(self, target: str) -> Snapshot:
        """The part of this snapshot that belongs to one target (shared, not copied: O(that target))."""
        return Snapshot(**{item.name: self._by_target(item.name).only(target) for item in fields(self)})

    def results_of(self, target: str) -> Mapping[tuple[str, str, str], CheckResult]:
        """TARGET's latest results, keyed (target, table, check)."""
        return self.part("results", target)

    def part(self, name: str, target: str) -> Mapping[Any, Any]:
        """TARGET's entries of the mapping called NAME (read-only)."""
        return self._by_target(name).part(target)

    def with_parts(self, target: str, parts: Mapping[str, Mapping[Any, Any]]) -> Snapshot:
        """A new snapshot with TARGET's entries of each named mapping replaced; everything else is shared."""
        return replace(self, **{name: self._by_target(name).replaced(target, part) for name, part in parts.items()})

    def _by_target(self, name: str) -> ByTarget[Any, Any]:
        """One of the mappings, as the ByTarget __post_init__ made it."""
        mapping: ByTarget[Any, Any] = getattr(self, name)
        return mapping


class SnapshotSource(Protocol):
    """Anything that holds a current snapshot: the store, or one frozen snapshot."""

    @property
    def current(self) -> Snapshot:
        """The snapshot to read."""
        ...


@dataclass(frozen=True)
class FrozenSnapshot:
    """A SnapshotSource that always returns the same snapshot (per-target fragments are encoded from one)."""

    current: Snapshot


class SnapshotStore:
    """Holds the current Snapshot; writers build a new one and swap it in under a lock, readers never wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._listeners: list[Callable[[str], None]] = []
        self._retired: set[tuple[str, str]] = set()  # (target, table) no longer watched: late results are dropped

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call listener(target) after each publish, in the publishing thread (the exposition encodes ahead)."""
        self._listeners.append(listener)

    @property
    def current(self) -> Snapshot:
        """The latest snapshot (an immutable object: safe to read without a lock)."""
        return self._snapshot

    def publish(
        self,
        result: CheckResult,
        *,
        rows_verified: tuple[str, int] | None = None,
        probe: tuple[list[float], int] | None = None,
        up: bool | None = None,
        version: tuple[int, str] | None = None,
    ) -> None:
        """Swap in a new snapshot with this result and its side effects on the cumulative series."""
        target = result.target
        with self._lock:
            if (target, result.table) in self._retired:
                return  # a check of a table discovery dropped finished late: its series must not come back
            old = self._snapshot
            # Only this target's entries are copied; every other target's part is shared with OLD.
            changes: dict[str, Any] = {}
            results = dict(old.results_of(target))
            results[(target, result.table, result.check)] = result
            changes["results"] = results
            if rows_verified is not None:
                mode, rows = rows_verified
                verified = dict(old.part("rows_verified", target))
                key = (target, result.table, mode)
                verified[key] = verified.get(key, 0) + rows
                changes["rows_verified"] = verified
            if probe is not None:
                histograms = dict(old.part("probe_histograms", target))
                key2 = (target, result.table)
                histograms[key2] = histograms.get(key2, HistogramState()).observe(*probe)
                changes["probe_histograms"] = histograms
            if up is not None:
                changes["target_up"] = {target: up}
            if version is not None:
                changes["target_versions"] = {target: version}
            changes["generations"] = {target: old.generations.get(target, 0) + 1}
            self._snapshot = old.with_parts(target, changes)
        self._notify(result.target)

    def _notify(self, target: str) -> None:
        """Tell the listeners that TARGET's part of the snapshot changed."""
        for listener in self._listeners:
            try:
                listener(target)
            except Exception:  # encoding ahead is an optimisation: a scrape encodes what is missing itself
                log.exception("snapshot listener failed for target %s", target)

    def publish_discovery(self, result: Any) -> None:
        """Swap in a snapshot with this target's discovery result (exporter.discovery.DiscoveryResult)."""
        target = result.target
        with self._lock:
            old = self._snapshot
            self._snapshot = old.with_parts(
                target, {"discoveries": {target: result}, "generations": {target: old.generations.get(target, 0) + 1}}
            )
        self._notify(target)

    def retire(self, target: str, tables: set[str]) -> None:
        """Drop every series of these tables now, and any result their checks publish later."""
        if not tables:
            return
        with self._lock:
            self._retired.update((target, table) for table in tables)
            old = self._snapshot
            changes: dict[str, Any] = {
                name: {k: v for k, v in old.part(name, target).items() if k[1] not in tables}
                for name in ("results", "rows_verified", "probe_histograms")
            }
            changes["generations"] = {target: old.generations.get(target, 0) + 1}
            self._snapshot = old.with_parts(target, changes)
        self._notify(target)

    def reinstate(self, target: str, tables: set[str]) -> None:
        """These tables are watched again (found again by discovery): their results are published again."""
        with self._lock:
            self._retired.difference_update((target, table) for table in tables)

    def forget(self, targets: list[str]) -> None:
        """Drop these targets' series (a reload removed or restarted them); their generations still move forward."""
        if not targets:
            return
        gone = set(targets)
        with self._lock:
            self._retired = {key for key in self._retired if key[0] not in gone}
            old = self._snapshot
            parts: dict[str, Any] = {
                item.name: old._by_target(item.name).without(gone) for item in fields(old) if item.name != "generations"
            }
            # Never backwards: a cached fragment of the old target must not look as fresh as the new target's.
            parts["generations"] = ByTarget.of(
                {**old.generations, **{name: old.generations.get(name, 0) + 1 for name in gone}}
            )
            self._snapshot = Snapshot(**parts)

    def latest(self, target: str, table: str, check: str) -> CheckResult | None:
        """The latest result of one check."""
        return self._snapshot.results.get((target, table, check))

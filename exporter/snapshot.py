"""Immutable check results and the store that swaps them in whole; scrapes only read from here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from exporter.scan_target import ScanSource

log = logging.getLogger(__name__)

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
    """Everything /metrics shows, at one instant."""

    results: Mapping[tuple[str, str, str], CheckResult] = field(default_factory=dict)
    rows_verified: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    probe_histograms: Mapping[tuple[str, str], HistogramState] = field(default_factory=dict)
    target_up: Mapping[str, bool] = field(default_factory=dict)
    target_versions: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    # Bumped on every publish for a target: /metrics re-encodes only the targets whose generation moved.
    generations: Mapping[str, int] = field(default_factory=dict)
    # The last discovery run of each `tables: auto` target (exporter.discovery.DiscoveryResult).
    discoveries: Mapping[str, Any] = field(default_factory=dict)

    def for_target(self, target: str) -> Snapshot:
        """The part of this snapshot that belongs to one target (every mapping is keyed by target first)."""
        parts: dict[str, Any] = {}
        for item in fields(self):
            mapping: Mapping[Any, Any] = getattr(self, item.name)
            parts[item.name] = {
                k: v for k, v in mapping.items() if k == target or (isinstance(k, tuple) and k[0] == target)
            }
        return Snapshot(**parts)


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
        with self._lock:
            if (result.target, result.table) in self._retired:
                return  # a check of a table discovery dropped finished late: its series must not come back
            old = self._snapshot
            results = dict(old.results)
            results[(result.target, result.table, result.check)] = result
            verified = dict(old.rows_verified)
            if rows_verified is not None:
                mode, rows = rows_verified
                key = (result.target, result.table, mode)
                verified[key] = verified.get(key, 0) + rows
            histograms = dict(old.probe_histograms)
            if probe is not None:
                key2 = (result.target, result.table)
                histograms[key2] = histograms.get(key2, HistogramState()).observe(*probe)
            target_up = dict(old.target_up)
            if up is not None:
                target_up[result.target] = up
            versions = dict(old.target_versions)
            if version is not None:
                versions[result.target] = version
            generations = dict(old.generations)
            generations[result.target] = generations.get(result.target, 0) + 1
            self._snapshot = Snapshot(
                generations=MappingProxyType(generations),
                results=MappingProxyType(results),
                rows_verified=MappingProxyType(verified),
                probe_histograms=MappingProxyType(histograms),
                target_up=MappingProxyType(target_up),
                target_versions=MappingProxyType(versions),
                discoveries=old.discoveries,
            )
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
        with self._lock:
            self._snapshot = self._replaced(self._snapshot, result.target, discoveries={result.target: result})
        self._notify(result.target)

    def retire(self, target: str, tables: set[str]) -> None:
        """Drop every series of these tables now, and any result their checks publish later."""
        if not tables:
            return
        with self._lock:
            self._retired.update((target, table) for table in tables)
            old = self._snapshot

            def kept(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
                return {k: v for k, v in mapping.items() if not (k[0] == target and k[1] in tables)}

            self._snapshot = self._replaced(
                replace(
                    old,
                    results=MappingProxyType(kept(old.results)),
                    rows_verified=MappingProxyType(kept(old.rows_verified)),
                    probe_histograms=MappingProxyType(kept(old.probe_histograms)),
                ),
                target,
            )
        self._notify(target)

    def reinstate(self, target: str, tables: set[str]) -> None:
        """These tables are watched again (found again by discovery): their results are published again."""
        with self._lock:
            self._retired.difference_update((target, table) for table in tables)

    @staticmethod
    def _replaced(old: Snapshot, target: str, discoveries: Mapping[str, Any] | None = None) -> Snapshot:
        """OLD with TARGET's generation bumped (and discovery results merged in); OLD's other mappings are shared."""
        generations = dict(old.generations)
        generations[target] = generations.get(target, 0) + 1
        return replace(
            old,
            generations=MappingProxyType(generations),
            discoveries=MappingProxyType({**old.discoveries, **(discoveries or {})}),
        )

    def forget(self, targets: list[str]) -> None:
        """Drop these targets' series (a reload removed or restarted them); their generations still move forward."""
        if not targets:
            return
        gone = set(targets)
        with self._lock:
            self._retired = {key for key in self._retired if key[0] not in gone}
            old = self._snapshot
            parts: dict[str, Any] = {}
            for item in fields(old):
                mapping: Mapping[Any, Any] = getattr(old, item.name)
                parts[item.name] = MappingProxyType(
                    {k: v for k, v in mapping.items() if (k[0] if isinstance(k, tuple) else k) not in gone}
                )
            # Never backwards: a cached fragment of the old target must not look as fresh as the new target's.
            parts["generations"] = MappingProxyType(
                {**old.generations, **{name: old.generations.get(name, 0) + 1 for name in gone}}
            )
            self._snapshot = Snapshot(**parts)

    def latest(self, target: str, table: str, check: str) -> CheckResult | None:
        """The latest result of one check."""
        return self._snapshot.results.get((target, table, check))

"""The snapshot store: whole-snapshot swaps, grouped by target, so that a publish copies one target's entries."""

from __future__ import annotations

import pytest

from exporter.snapshot import ByTarget, CheckResult, Snapshot, SnapshotStore


def result(target: str, table: str = "t", check: str = "full", success: bool = True) -> CheckResult:
    """A finished check."""
    return CheckResult(
        target=target,
        table=table,
        check=check,
        success=success,
        duration_seconds=0.1,
        finished_at=1.0,
        last_success_at=1.0 if success else None,
        interval_seconds=60.0,
    )


def fleet(count: int) -> SnapshotStore:
    """A store with COUNT targets' results, rows, probe histograms, up and versions."""
    store = SnapshotStore()
    for index in range(count):
        name = f"db{index:03d}"
        store.publish(result(name, check="full"), rows_verified=("full", 10), up=True, version=(18, "18.1"))
        store.publish(result(name, check="insert_probe"), probe=([0.001, 0.2], 1))
    return store


def test_a_publish_replaces_only_its_target_and_earlier_snapshots_stay_as_they_were() -> None:
    store = fleet(3)
    before = store.current
    store.publish(result("db001", check="full", success=False), rows_verified=("full", 5), up=False)
    after = store.current
    assert before is not after
    # The old snapshot is untouched: a scrape holding it sees one consistent instant.
    assert before.results[("db001", "t", "full")].success is True
    assert before.rows_verified[("db001", "t", "full")] == 10
    assert before.target_up["db001"] is True
    assert after.results[("db001", "t", "full")].success is False
    assert after.rows_verified[("db001", "t", "full")] == 15
    assert after.target_up["db001"] is False
    assert after.generations == {"db000": 2, "db001": 3, "db002": 2}
    # Other targets' entries are the very same objects: nothing of theirs was copied.
    for name in ("db000", "db002"):
        assert after.results_of(name) == before.results_of(name)
        assert after.results[(name, "t", "full")] is before.results[(name, "t", "full")]
    assert len(after.results) == 6 and len(after.rows_verified) == 3 and len(after.probe_histograms) == 3


def test_the_grouped_mappings_read_like_the_flat_dicts_they_replace() -> None:
    store = fleet(3)
    snapshot = store.current
    flat = {(f"db{i:03d}", "t", c): snapshot.results[(f"db{i:03d}", "t", c)] for i in range(3) for c in ("full",)}
    flat.update(
        {(f"db{i:03d}", "t", "insert_probe"): snapshot.results[(f"db{i:03d}", "t", "insert_probe")] for i in range(3)}
    )
    assert dict(snapshot.results) == flat and snapshot.results == flat
    assert sorted(snapshot.results) == sorted(flat)
    assert ("db009", "t", "full") not in snapshot.results
    assert snapshot.results.get(("db009", "t", "full")) is None
    with pytest.raises(KeyError):
        snapshot.results[("db000", "t", "nope")]
    assert snapshot.target_versions == {f"db{i:03d}": (18, "18.1") for i in range(3)}
    histogram = snapshot.probe_histograms[("db002", "t")]
    assert (histogram.count, histogram.failures, histogram.buckets[1], histogram.buckets[-1]) == (2, 1, 1, 2)


def test_for_target_is_that_target_alone_and_equals_filtering_the_whole_snapshot() -> None:
    snapshot = fleet(4).current
    part = snapshot.for_target("db002")
    for name in ("results", "rows_verified", "probe_histograms", "target_up", "target_versions", "generations"):
        whole = getattr(snapshot, name)
        expected = {k: v for k, v in whole.items() if (k[0] if isinstance(k, tuple) else k) == "db002"}
        assert dict(getattr(part, name)) == expected and expected
    assert snapshot.for_target("nobody") == Snapshot()


def test_a_snapshot_built_from_plain_dicts_is_grouped_by_target() -> None:
    snapshot = Snapshot(
        results={("a", "t", "full"): result("a"), ("b", "t", "full"): result("b")}, target_up={"a": True}
    )
    assert isinstance(snapshot.results, ByTarget) and isinstance(snapshot.target_up, ByTarget)
    assert list(snapshot.for_target("b").results) == [("b", "t", "full")]
    assert dict(snapshot.for_target("a").target_up) == {"a": True}


def test_retire_and_forget_drop_series_and_move_generations_forward() -> None:
    store = fleet(3)
    store.publish(result("db001", table="u"), rows_verified=("full", 7))
    store.retire("db001", {"t"})
    snapshot = store.current
    assert sorted(k for k in snapshot.results if k[0] == "db001") == [("db001", "u", "full")]
    assert ("db001", "t") not in snapshot.probe_histograms
    assert dict(snapshot.rows_verified.items()) == {
        ("db000", "t", "full"): 10,
        ("db001", "u", "full"): 7,
        ("db002", "t", "full"): 10,
    }
    store.publish(result("db001", table="t"))  # a late result of the retired table is dropped
    assert ("db001", "t", "full") not in store.current.results
    generation = store.current.generations["db002"]
    store.forget(["db002"])
    snapshot = store.current
    assert not any(k[0] == "db002" for k in snapshot.results) and "db002" not in snapshot.target_up
    assert snapshot.generations["db002"] == generation + 1
    assert len(snapshot.results) == 3

"""Plan estimates: based on the table's current size, basis shown, calibrated on 1M rows (issue 14, failure 8)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from migrations import probe, steps
from migrations.catalog import TableSize
from tests.migrations.helpers import cli, legacy_trigger
from tests.schema import create_list_table, insert_rows, no_autovacuum


def step_seconds(stderr: str) -> dict[str, float]:
    """How long each step took, as the run logged it ("step 2/3 validate-check: done in 336 ms")."""
    units = {"ms": 0.001, "s": 1.0, "min": 60.0}
    return {
        name: float(value) * units[unit]
        for name, value, unit in re.findall(r"step \d+/\d+ ([\w:-]+): done in ([\d.]+) ?(ms|s|min)", stderr)
    }


def estimates(dsn: str, *args: str) -> dict[str, Any]:
    """plan --json: the estimate of each step by name, and the basis."""
    plan = json.loads(cli(dsn, "plan", "--json", *args).out)
    return {"steps": {s["name"]: s["estimate_seconds"] for s in plan["steps"]}, "basis": plan["estimate_basis"]}


def small_analyzed_table(conn: psycopg.Connection[Any]) -> None:
    """20,000 rows in 10 partitions under the legacy trigger, analyzed, autovacuum off: under the probe's minimum."""
    create_list_table(conn, modulus=10, trigger=legacy_trigger(conn))
    no_autovacuum(conn)
    insert_rows(conn, 20_000, modulus=10)
    conn.execute("ANALYZE chunks")


@pytest.mark.versioned("partkey-migrate estimates")
def test_estimates_follow_the_current_size_not_a_stale_row_count(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=10, trigger=legacy_trigger(conn))
    # An autovacuum ANALYZE during the second INSERT records the grown pages but not the uncommitted rows (seen on
    # PG 12 in the matrix): the rows per page the estimate scales by would halve.
    no_autovacuum(conn)
    insert_rows(conn, 20_000, modulus=10)
    conn.execute("ANALYZE chunks")
    small = estimates(dsn)
    insert_rows(conn, 60_000, modulus=10)  # 4x the rows; reltuples still says 20,000 (no ANALYZE since)
    big = estimates(dsn)
    ratio = big["steps"]["validate-check"] / small["steps"]["validate-check"]
    assert 3.0 < ratio < 5.0, (small, big)
    assert "pg_relation_size" in big["basis"]
    rows = int(re.search(r"~([\d,]+) rows", big["basis"]).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert 60_000 < rows < 100_000, big["basis"]
    text = cli(dsn, "plan").out
    assert text.splitlines()[1].startswith("estimates from: ")


def test_plan_scales_every_estimate_by_the_speed_it_measured_on_the_table(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's speed multiplies the built-in rates; the basis line says what was read and how fast."""
    small_analyzed_table(conn)
    built_in = estimates(dsn)
    assert "built-in rates (heap under 64.0 MB: not measured)" in built_in["basis"]
    monkeypatch.setattr(probe, "PROBE_MIN_BYTES", 0)  # probe this small table too
    measured = estimates(dsn)
    found = re.search(r"speed: x([\d.]+) the built-in rates, measured now: a ([\d.]+)% sample", measured["basis"])
    assert found is not None, measured["basis"]
    assert float(found.group(2)) == 100  # a table smaller than PROBE_BYTES is read whole
    speed = float(found.group(1))
    # Estimates are rounded to the millisecond in --json (the built-in one's rounding is multiplied by the speed),
    # the speed to two decimals.
    for step in ("pre-verify", "validate-check"):
        expected = built_in["steps"][step] * speed
        assert measured["steps"][step] == pytest.approx(expected, rel=0.01, abs=0.0006 * speed + 0.0006), step


def test_every_estimate_is_the_built_in_one_times_the_speed() -> None:
    """rewrite, index, scan, VALIDATE and backfill estimates all scale with TableSize.speed."""
    size = TableSize(heap_bytes=300 * 1024**2, total_bytes=450 * 1024**2, rows=1_000_000, index_count=2)
    fast, slow = replace(size, speed=0.5), replace(size, speed=3.0)
    for estimate in (
        steps.rewrite_estimate,
        steps.scan_estimate,
        lambda s: steps.scan_estimate(s, "validate"),
        lambda s: steps.index_estimate(s, 2),
        steps.backfill_estimate,
    ):
        assert estimate(size) > 0
        assert estimate(fast) == pytest.approx(estimate(size) * 0.5)
        assert estimate(slow) == pytest.approx(estimate(size) * 3.0)


def test_the_likely_range_is_the_spread_of_runs_estimated_the_same_way(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a measured speed the range is the built-in rates' spread; with one, the spread measured with it."""
    small_analyzed_table(conn)
    for probed, factor, source in ((False, [0.25, 2.5], "built-in rates"), (True, [0.2, 3.7], "measured speed")):
        if probed:
            monkeypatch.setattr(probe, "PROBE_MIN_BYTES", 0)  # probe this small table too
        plan = json.loads(cli(dsn, "plan", "--json").out)
        assert (plan["estimate_range_factor"], plan["estimate_range_source"]) == (factor, source)
        assert ("measured now" in plan["estimate_basis"]) == probed, plan["estimate_basis"]
        for step in plan["steps"]:
            # Both sides are rounded to the millisecond in --json, the estimate before it is multiplied.
            low, high = step["estimate_range_seconds"]
            assert low == pytest.approx(step["estimate_seconds"] * factor[0], abs=0.0006 * factor[0] + 0.0006)
            assert high == pytest.approx(step["estimate_seconds"] * factor[1], abs=0.0006 * factor[1] + 0.0006)
        says = f"{factor[0]:g}x-{factor[1]:g}x, the spread of real times at the {source}"
        assert says in plan["estimate_basis"]
        lines = cli(dsn, "plan").out.splitlines()
        total = next(line for line in lines if line.startswith("estimated total: "))
        assert f"({says}; rates measured on PostgreSQL 18" in total, total


def test_only_a_measured_speed_takes_the_measured_spread() -> None:
    """A size the probe did not measure (too small, or the read failed) keeps the built-in rates' range."""
    size = TableSize(heap_bytes=300 * 1024**2, total_bytes=450 * 1024**2, rows=1_000_000, index_count=2)
    assert steps.likely_range(size) == steps.BUILT_IN
    assert steps.likely_range(replace(size, probe="built-in rates (the timed sample read failed: x)")) == steps.BUILT_IN
    assert steps.likely_range(replace(size, speed=1.7, speed_measured=True)) == steps.MEASURED
    plan = steps.Plan("upgrade", "check", "why")
    plan.based_on(replace(size, speed=1.7, speed_measured=True))
    assert plan.likely == steps.MEASURED
    assert plan.likely.spread(10) == "2.0 s to 37.0 s"
    assert "likely range: 0.2x-3.7x, the spread of real times at the measured speed" in plan.estimate_basis

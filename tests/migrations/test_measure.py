"""--measure: before/after INSERT latency side by side, measured in the same run, leaving nothing behind."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from tests.migrations.helpers import catalog, cli, state
from tests.migrations.test_generated_strategy import PLAIN_STEPS, create_plain
from tests.schema import create_list_table, insert_rows


def table_rows(output: str) -> dict[str, list[float]]:
    """The measure table's rows: label -> [single-row median, bulk median]."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"\s+(before: .+?|after: .+?|after/before)\s+([\d.]+)\s+([\d.]+)$", line)
        if match:
            rows[match.group(1).split(":")[0]] = [float(match.group(2)), float(match.group(3))]
    return rows


def test_measure_with_dry_run_prints_medians_and_ratio_and_changes_nothing(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 2000, modulus=10)
    before = catalog(conn)
    run = cli(dsn, "upgrade", "--dry-run", "--measure")
    assert run.code == 0, run.err
    assert "scratch copies of public.chunks in one rolled-back transaction" in run.out
    assert "before: trigger compute_partition_key()" in run.out and "after: CHECK, no trigger" in run.out
    rows = table_rows(run.out)
    assert set(rows) == {"before", "after", "after/before"}
    assert all(value > 0 for value in rows["before"] + rows["after"])
    for column in (0, 1):  # the ratio printed is the ratio of the medians printed
        assert abs(rows["after/before"][column] - rows["after"][column] / rows["before"][column]) < 0.02
    assert catalog(conn) == before


def test_measure_runs_before_the_upgrade_of_a_plain_table(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_plain(conn, rows=1000)
    run = cli(dsn, "upgrade", "--measure")
    assert run.code == 0, run.err
    assert "after: STORED generated column" in run.out
    assert run.out.index("measure:") < run.out.index("upgrade finished")
    assert state(conn) == ("upgraded", PLAIN_STEPS)
    assert not [r for r in catalog(conn)["relations"] if r.startswith("partkey_measure")]

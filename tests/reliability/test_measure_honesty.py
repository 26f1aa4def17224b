"""--measure's verdict is honest: identical variants give "no difference" in at least 19 of 20 runs (slow: ~2 min)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.keyspec import KeySpec
from migrations.measure import Variant, compare, read_sample
from migrations.measure_copy import Changes
from migrations.options import Options
from migrations.runner import inspect
from tests.migrations.test_measure import semantik_like


@pytest.mark.slow
def test_identical_variants_give_no_difference_in_19_of_20_runs(conn: psycopg.Connection[Any]) -> None:
    semantik_like(conn, rows=2000)
    options = Options(spec=KeySpec(modulus=10))
    definition, columns, data = read_sample(conn, options, inspect(conn, options), 1000)
    same = Variant("as it is", Changes())
    found = []
    for run in range(20):
        # No seed: each run draws its own bootstrap resamples, as a user's run would.
        report = compare(conn, options, definition, columns, data, same, same, seconds=4, single_rows=100)
        for workload in (report.single, report.bulk):
            assert workload.interval is not None
            if not workload.interval.low <= 1.0 <= workload.interval.high:
                found.append((run, workload.name, workload.interval))
    # A run "finds a difference" when either workload's interval excludes 1.0.
    assert len({run for run, _, _ in found}) <= 1, found

"""Calibration: plan estimates against what the steps took, on a 1M-row table, within 2x (issue 14, failure 8).

A calibration run, not a CI gate: on these shared 2-core machines the same step took 0.19-0.25x its estimate on a
quiet CI run (test server with fsync off) and 1.3-1.8x under load, so a time bound here would fail on the machine,
not the code. Run it with PARTKEY_CALIBRATE=1 on the machine whose estimates you want to check.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import cli
from tests.migrations.test_estimates import estimates, step_seconds
from tests.schema import create_list_table, create_plain_table, insert_rows


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PARTKEY_CALIBRATE") != "1", reason="calibration run: PARTKEY_CALIBRATE=1")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("shape", ["list", "plain"])
def test_estimates_within_2x_on_a_million_rows(conn: psycopg.Connection[Any], dsn: str, shape: str) -> None:
    if shape == "list":
        create_list_table(conn, modulus=10, trigger="parent")
    else:
        create_plain_table(conn, modulus=10)
    insert_rows(conn, 1_000_000, modulus=10)
    conn.execute("VACUUM ANALYZE chunks")
    planned = estimates(dsn)["steps"]
    run = cli(dsn, "upgrade")
    assert run.code == 0, run.err
    took = step_seconds(run.err)
    step = "validate-check" if shape == "list" else "add-generated-column"
    ratio = took[step] / planned[step]
    print(f"{shape}: {step} estimated {planned[step]:.3f} s, took {took[step]:.3f} s (x{ratio:.2f})")
    assert 0.5 <= ratio <= 2.0, (step, planned[step], took[step])

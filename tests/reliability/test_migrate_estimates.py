"""Calibration: plan estimates against what the steps took, on a 1M-row table (issue 14, failure 8).

`plan` times a sample read of the table itself and scales the built-in rates by it (migrations/probe.py), so the
estimate follows the machine it runs on. The bound is the issue's: within 2x either way. It is still a calibration
run, not a CI gate: on this project's shared 2-vCPU VMs at load average 8-13, 4 of 25 step runs fell outside 2x
with the probe (5 would have without it; docs/migrate.md has every ratio), because the load changes within the
seconds between the probe and the step. Run it with PARTKEY_CALIBRATE=1 PARTKEY_SLOW=1 on the machine whose
estimates you want to check; it prints the ratio, the measured speed and the load average.
"""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import cli
from tests.migrations.test_estimates import estimates, step_seconds
from tests.schema import create_list_table, create_plain_table, insert_rows, no_autovacuum


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PARTKEY_CALIBRATE") != "1", reason="calibration run: PARTKEY_CALIBRATE=1")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("shape", ["list", "plain"])
def test_estimates_within_2x_on_a_million_rows(conn: psycopg.Connection[Any], dsn: str, shape: str) -> None:
    if shape == "list":
        create_list_table(conn, modulus=10, trigger="parent")
        no_autovacuum(conn)
    else:
        create_plain_table(conn, modulus=10)
        conn.execute("ALTER TABLE chunks SET (autovacuum_enabled = false)")
    insert_rows(conn, 1_000_000, modulus=10)
    conn.execute("VACUUM ANALYZE chunks")
    planned = estimates(dsn)
    assert "measured now" in planned["basis"], planned["basis"]
    run = cli(dsn, "upgrade")
    assert run.code == 0, run.err
    took = step_seconds(run.err)
    step = "validate-check" if shape == "list" else "add-generated-column"
    ratio = took[step] / planned["steps"][step]
    speed = re.search(r"x([\d.]+) the built-in rates", planned["basis"])
    load = os.getloadavg()[0]
    print(
        f"{shape}: {step} estimated {planned['steps'][step]:.3f} s, took {took[step]:.3f} s (x{ratio:.2f}; "
        f"speed {speed.group(1) if speed else '?'}, load {load:.1f})"
    )
    assert 0.5 <= ratio <= 2.0, (step, planned, took[step], load)

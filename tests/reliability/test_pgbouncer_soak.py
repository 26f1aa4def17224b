"""Issue 20's full run: two daemons and an application on one PgBouncer transaction pool for 60 s (slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pgbouncer import assert_clean_run, pgbouncer, run_two_daemons_and_an_application, semantik_chunks

MODULUS = 10


@pytest.fixture
def chunks(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """A LIST-partitioned table with the trigger and some rows, as semantik has it."""
    return semantik_chunks(conn, MODULUS)


@pytest.mark.slow
def test_two_daemons_and_an_application_share_a_transaction_pool_for_a_minute(
    chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str, tmp_path: Path
) -> None:
    with pgbouncer(admin_dsn, "transaction") as bouncer:
        run = run_two_daemons_and_an_application(bouncer.dsn(dsn), tmp_path, 60, MODULUS)
    assert_clean_run(run)
    assert run.app_transactions > 100

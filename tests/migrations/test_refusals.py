"""Refusals: what partkey-migrate refuses to do, and that a refusal changes nothing (issue 14)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import catalog, cli, legacy_trigger, state
from tests.schema import create_list_table, create_plain_table, insert_rows


@pytest.mark.versioned("partkey-migrate refusals")
@pytest.mark.parametrize("shape", ["list", "plain"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_downgrade_of_a_never_upgraded_table_refuses_and_changes_nothing(
    conn: psycopg.Connection[Any], dsn: str, shape: str, dry_run: bool
) -> None:
    if shape == "list":
        create_list_table(conn, modulus=10, trigger=legacy_trigger(conn))
    else:
        create_plain_table(conn, modulus=10)
    insert_rows(conn, 200, modulus=10)
    before = catalog(conn)

    run = cli(dsn, "downgrade", *(["--dry-run"] if dry_run else []))

    assert run.code == 1, run.err
    assert "public.chunks was never upgraded by partkey-migrate" in run.err
    assert "Nothing was changed" in run.err
    assert "Traceback" not in run.err
    assert catalog(conn) == before  # the legacy function's text too (it has the overflowing formula)
    assert state(conn) is None

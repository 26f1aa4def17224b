"""A full verification check reads one snapshot, whatever commits between its statements."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.hashtext import partition_for
from exporter.verify import Verifier
from tests.schema import create_list_table, insert_rows, no_autovacuum
from tests.support import config_for

pytestmark = pytest.mark.versioned("verification")


def _stale(conn: psycopg.Connection[Any], value: str) -> int:
    """Write one row of VALUE into a partition its key does not select; return that partition's value."""
    wrong = (partition_for(value, 10) + 3) % 10
    conn.execute("INSERT INTO chunks (collection_id, partition_key) VALUES (%s, %s)", (value, wrong))
    return wrong


def test_rows_committed_between_a_passs_statements_are_not_half_counted(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if conn.info.server_version < 140000:
        pytest.skip("before PostgreSQL 14 a pass is one statement (no remembered values): nothing commits between")
    create_list_table(conn, modulus=10, trigger=None)
    no_autovacuum(conn)
    insert_rows(conn, 2_000, modulus=10, collections=50)
    exporter = Exporter(config_for(dsn, "modulus: 10"))
    try:
        full = exporter.runners[("t1", "public.chunks", "verification_full")]
        assert full.run().payload.mismatched == 0  # the first pass: every partition grouped, values remembered
        first = "00000000-0000-4000-8000-0000000000a1"
        _stale(conn, first)
        # Between the pass's statements (after the per-partition aggregate, before the groups of new values are
        # read) another session commits one more stale row.
        evaluated = Verifier._evaluated
        injected: list[str] = []

        def commit_meanwhile(self: Verifier, *args: Any, **kwargs: Any) -> Any:
            if not injected:
                injected.append("00000000-0000-4000-8000-0000000000a2")
                with psycopg.connect(dsn, autocommit=True) as other:
                    _stale(other, injected[0])
            return evaluated(self, *args, **kwargs)

        monkeypatch.setattr(Verifier, "_evaluated", commit_meanwhile)
        seen = full.run()
        monkeypatch.undo()
        assert seen.success, seen.error
        assert injected, "the pass never read a group of new values"
        payload = seen.payload
        # What the pass's snapshot held: 2,001 rows, one of them stale; the row committed meanwhile is in neither
        # the row count nor the bad pairs (under READ COMMITTED the groups read after the aggregate counted it).
        assert (payload.rows_checked, payload.mismatched) == (2_001, 1)
        assert [b.source for b in payload.bad_pairs] == [(first,)]
        after = full.run().payload
        assert (after.rows_checked, after.mismatched) == (2_002, 2)
    finally:
        exporter.stop()

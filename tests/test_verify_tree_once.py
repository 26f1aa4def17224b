"""A full run reads the table's tree of partitions once, with or without a cached plan (issue 15)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.keyspec import KeySpec
from exporter.verify import Verifier
from exporter.verify_cache import PlanCache, fingerprint
from exporter.verify_plan import read_catalog
from tests.schema import create_list_table, insert_rows, no_autovacuum

pytestmark = pytest.mark.versioned("verification")

SPEC = KeySpec(modulus=10)


class _Counting(psycopg.Connection[Any]):
    """A real connection that also keeps the text of every statement it sends, to count the tree walks."""

    sent: list[str]

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        """As psycopg's, keeping the statement's text."""
        text = query if isinstance(query, str | bytes) else query.as_string(self)
        self.sent.append(text.decode() if isinstance(text, bytes) else text)
        return super().execute(query, params, **kwargs)


def _tree_walks(sent: list[str]) -> int:
    """Statements that walk pg_inherits from the table down (relation_tree)."""
    return sum("WITH RECURSIVE tree" in text for text in sent)


def test_a_full_run_walks_the_tree_once_cold_or_warm(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """Cold cache: the fingerprint's rows feed the catalog; warm: the fingerprint alone; no cache: the catalog."""
    create_list_table(conn, modulus=10, trigger=None, default_partition=True)
    no_autovacuum(conn)
    insert_rows(conn, 2_000, modulus=10, collections=50)
    with _Counting.connect(dsn, autocommit=True) as counting:
        counting.sent = []
        cache = PlanCache()
        walks = []
        for plan_cache in (cache, cache, None):
            counting.sent.clear()
            result = Verifier(counting, SPEC, plan_cache=plan_cache).run("full")
            walks.append(_tree_walks(counting.sent))
            assert len(result.partitions) == 11 and result.mismatched == 0
        assert (cache.misses, cache.hits) == (1, 1)
        assert walks == [1, 1, 1], walks
        # The leaves the fingerprint hands over are exactly those read_catalog reads itself, in the same order.
        _, estimates, leaves = fingerprint(counting, SPEC)
        catalog, rows = read_catalog(counting, SPEC)
        assert read_catalog(counting, SPEC, leaves) == (catalog, rows)
        assert [leaf[0] for leaf in leaves] == [leaf.oid for leaf in catalog.leaves]
        assert {oid: estimates[oid] for oid in rows} == rows

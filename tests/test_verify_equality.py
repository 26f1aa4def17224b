"""Full verification stays exact when equal source values are not identical (numeric 1.0 = 1.00, float 0 = -0)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.hashtext import partition_for
from exporter.keyspec import KeySpec
from exporter.verify import VerificationResult, Verifier
from exporter.verify_cache import PlanCache
from tests.schema import no_autovacuum, scalar
from tests.test_verify_property import Pair, _pairs, reference

pytestmark = pytest.mark.versioned("verification")

# Keys differ for each pair of equal values at this modulus: '1.0' -> 5, '1.00' -> 4; '0' -> 6, '-0' -> 2.
MODULUS = 10


def _table(conn: psycopg.Connection[Any], kind: str, values: list[str], index: bool) -> KeySpec:
    """A LIST table, one partition per key, whose source column of type KIND holds each value twice: once under
    its own key, once (stale) in the partition of the equal value listed next to it."""
    conn.execute(
        f"CREATE TABLE chunks (id bigint NOT NULL, amount {kind}, partition_key integer)"
        " PARTITION BY LIST (partition_key)"
    )
    for key in range(MODULUS):
        conn.execute(f"CREATE TABLE chunks_p{key} PARTITION OF chunks FOR VALUES IN ({key})")
    no_autovacuum(conn)
    if index:
        conn.execute("CREATE INDEX ON chunks (amount)")
    rows: list[tuple[int, str, int]] = []
    for number, value in enumerate(values):
        other = values[number ^ 1]  # its equal partner: 1.0 <-> 1.00
        texts = scalar(conn, f"SELECT %s::{kind}::text", (value,))
        rows.append((len(rows), value, partition_for(str(texts), MODULUS)))
        rows.append((len(rows), value, partition_for(str(scalar(conn, f"SELECT %s::{kind}::text", (other,))), MODULUS)))
    with conn.cursor() as cursor:
        cursor.executemany(f"INSERT INTO chunks VALUES (%s, %s::{kind}, %s)", rows)
    return KeySpec(source_column="amount", modulus=MODULUS)


def _seen(result: VerificationResult) -> tuple[tuple[int, int, int, int], Counter[Pair]]:
    """Counts and bad pairs of a run, in the reference's shape."""
    counts = (result.rows_checked, result.mismatched, result.null_keys, result.expression_errors)
    return counts, _pairs(result)


@pytest.mark.parametrize("index", [False, True], ids=["no-index", "index"])
@pytest.mark.parametrize(
    ("kind", "values"),
    [("numeric", ["1.0", "1.00"]), ("float8", ["0", "-0"]), ("float4", ["0", "-0"])],
)
def test_equal_values_with_different_text_are_verified_exactly(
    conn: psycopg.Connection[Any], kind: str, values: list[str], index: bool
) -> None:
    spec = _table(conn, kind, values, index)
    # The premise: equal for the type, different keys by their text.
    assert scalar(conn, f"SELECT %s::{kind} = %s::{kind}", tuple(values)) is True
    expected = reference(conn, spec)
    assert expected[0] == (4, 2, 0, 0)
    assert _seen(Verifier(conn, spec, primary_key=("id",), exact_rows=True).run("full")) == expected
    cache = PlanCache()
    # The first run through a cache, then the second (values remembered on PG 14+ for the safe types).
    for _ in range(2):
        result = Verifier(conn, spec, primary_key=("id",), plan_cache=cache, exact_rows=True).run("full")
        assert _seen(result) == expected
        assert all(not e.primary_key or e.stored_key != e.expected_key for e in result.examples)
    conn.execute("ANALYZE chunks")
    assert _seen(Verifier(conn, spec, primary_key=("id",), plan_cache=cache, exact_rows=True).run("full")) == expected

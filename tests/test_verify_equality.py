"""Full verification stays exact when equal source values are not identical (numeric 1.0 = 1.00, float 0 = -0)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.formula import parse_source
from exporter.hashtext import partition_for
from exporter.keyspec import KeySpec
from exporter.verify import VerificationResult, Verifier
from exporter.verify_cache import PlanCache
from tests.schema import no_autovacuum, scalar
from tests.test_verify_property import Pair, _pairs, reference

pytestmark = pytest.mark.versioned("verification")

# Keys differ for each pair of equal values at this modulus: '1.0' -> 5, '1.00' -> 4; '0' -> 6, '-0' -> 2.
MODULUS = 10


def _list_table(conn: psycopg.Connection[Any], columns: str) -> None:
    """A chunks table of COLUMNS, LIST-partitioned by partition_key with one partition per key, autovacuum off."""
    conn.execute(f"CREATE TABLE chunks ({columns}) PARTITION BY LIST (partition_key)")
    for key in range(MODULUS):
        conn.execute(f"CREATE TABLE chunks_p{key} PARTITION OF chunks FOR VALUES IN ({key})")
    no_autovacuum(conn)


def _table(conn: psycopg.Connection[Any], kind: str, values: list[str], index: bool) -> KeySpec:
    """A LIST table, one partition per key, whose source column of type KIND holds each value twice: once under
    its own key, once (stale) in the partition of the equal value listed next to it."""
    _list_table(conn, f"id bigint NOT NULL, amount {kind}, partition_key integer")
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


def _crossed(texts: list[str]) -> list[tuple[int, str, int]]:
    """(id, value, key) rows: each of two equal spellings under its own text's key and under its partner's."""
    pairs = [
        (value, partition_for(key_text, MODULUS)) for n, value in enumerate(texts) for key_text in (value, texts[n ^ 1])
    ]
    return [(number, value, key) for number, (value, key) in enumerate(pairs)]


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


def test_an_unsafe_source_type_is_verified_row_by_row_and_says_why(conn: psycopg.Connection[Any]) -> None:
    spec = _table(conn, "numeric", ["1.0", "1.00"], index=True)
    result = Verifier(conn, spec, primary_key=("id",)).run("full")
    assert {p.plan.path for p in result.partitions} == {"row-by-row"}
    reasons = {p.plan.reason for p in result.partitions}
    assert reasons == {"source amount numeric: equal values may differ in text, so the key is per row"}
    data = result.to_dict()
    assert {p["path"] for p in data["partitions"]} == {"row-by-row"}
    # Every row is counted, per leaf.
    assert sum(p.rows for p in result.partitions) == 4 and all(p.rows_exact for p in result.partitions)
    # Examples are the stale rows themselves (`= 1.0` would also select the good 1.00 rows).
    assert sorted(e.primary_key["id"] for e in result.examples) == ["1", "3"]
    explain = Verifier(conn, spec).explain_full()
    assert "Seq Scan" in explain


@pytest.mark.parametrize("kind", ["integer", "bigint", "uuid", "text", "varchar(40)", "character(36)"])
def test_safe_source_types_keep_their_grouped_paths(conn: psycopg.Connection[Any], kind: str) -> None:
    _list_table(conn, f"id bigint, amount {kind}, partition_key integer")
    conn.execute("CREATE INDEX ON chunks (amount)")
    spec = KeySpec(source_column="amount", modulus=MODULUS)
    paths = {p.plan.path for p in Verifier(conn, spec).run("full").partitions}
    assert paths == {"loose-index-scan"}


def test_a_column_type_change_invalidates_the_cached_decision(conn: psycopg.Connection[Any]) -> None:
    _list_table(conn, "id bigint, amount text, partition_key integer")
    spec = KeySpec(source_column="amount", modulus=MODULUS)
    cache = PlanCache()
    assert {p.plan.path for p in Verifier(conn, spec, plan_cache=cache).run("full").partitions} == {"group-by"}
    conn.execute("ALTER TABLE chunks ALTER COLUMN amount TYPE numeric USING amount::numeric")
    paths = {p.plan.path for p in Verifier(conn, spec, plan_cache=cache).run("full").partitions}
    assert paths == {"row-by-row"}
    assert cache.misses == 2


def _icu(conn: psycopg.Connection[Any]) -> bool:
    """Whether this server can create an ICU collation (PostgreSQL 12+ built with ICU)."""
    if conn.info.server_version < 120000:
        return False
    return bool(scalar(conn, "SELECT count(*) FROM pg_collation WHERE collprovider = 'i'"))


def test_a_nondeterministic_collation_is_verified_row_by_row(conn: psycopg.Connection[Any]) -> None:
    if conn.info.server_version < 120000:
        pytest.skip("nondeterministic collations exist from PostgreSQL 12; PG 11 has only deterministic ones")
    if not _icu(conn):
        pytest.skip("this server has no ICU collations")
    try:
        conn.execute("CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false)")
    except psycopg.errors.FeatureNotSupported as error:
        pytest.skip(f"no ICU collation can be created here: {error}")
    _list_table(conn, "id bigint, amount text COLLATE nocase, partition_key integer")
    spec = KeySpec(source_column="amount", modulus=MODULUS)
    assert scalar(conn, "SELECT 'Ab'::text COLLATE nocase = 'aB'") is True
    # Each spelling under the key of its own text and of the other one's: some of them stale.
    with conn.cursor() as cursor:
        cursor.executemany("INSERT INTO chunks VALUES (%s, %s, %s)", _crossed(["Ab", "aB"]))
    expected = reference(conn, spec)
    cache = PlanCache()
    for _ in range(2):
        result = Verifier(conn, spec, primary_key=("id",), plan_cache=cache).run("full")
        assert _seen(result) == expected
        assert {p.plan.path for p in result.partitions} == {"row-by-row"}
    assert "nondeterministic collation" in result.partitions[0].plan.reason


def test_a_composite_key_with_one_unsafe_column_is_verified_row_by_row(conn: psycopg.Connection[Any]) -> None:
    _list_table(conn, "id bigint, collection_id integer, amount numeric, partition_key integer")
    conn.execute("CREATE INDEX ON chunks (collection_id, amount)")
    source = parse_source("collection_id::text || ':' || amount::text")
    spec = KeySpec(source_column="collection_id", source=source, modulus=MODULUS)
    # 7:1.0 and 7:1.00, each under its own key and under the other's.
    texts = ["7:1.0", "7:1.00"]
    rows = [(number, 7, value.split(":")[1], key) for number, value, key in _crossed(texts)]
    with conn.cursor() as cursor:
        cursor.executemany("INSERT INTO chunks VALUES (%s, %s, %s::numeric, %s)", rows)
    expected = reference(conn, spec)
    assert expected[0][1] == 2
    result = Verifier(conn, spec, primary_key=("id",), plan_cache=PlanCache()).run("full")
    assert _seen(result) == expected
    assert {p.plan.path for p in result.partitions} == {"row-by-row"}
    assert "amount numeric" in result.partitions[0].plan.reason


def test_citext_is_verified_row_by_row(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.execute("CREATE EXTENSION citext")
    except psycopg.Error as error:
        pytest.skip(f"the citext extension is not available on this server: {error}")
    _list_table(conn, "id bigint, amount citext, partition_key integer")
    conn.execute("CREATE INDEX ON chunks (amount)")
    spec = KeySpec(source_column="amount", modulus=MODULUS)
    texts = ["Ab", "aB"]
    with conn.cursor() as cursor:
        cursor.executemany("INSERT INTO chunks VALUES (%s, %s, %s)", _crossed(texts))
    expected = reference(conn, spec)
    assert expected[0][1] == 2
    result = Verifier(conn, spec, primary_key=("id",), plan_cache=PlanCache()).run("full")
    assert _seen(result) == expected
    assert {p.plan.path for p in result.partitions} == {"row-by-row"}


@pytest.mark.parametrize("mode", ["incremental", "sample"])
def test_window_passes_count_and_pick_examples_by_the_exact_value(conn: psycopg.Connection[Any], mode: str) -> None:
    spec = _table(conn, "numeric", ["1.0", "1.00"], index=True)
    expected = reference(conn, spec)
    window = {"watermark_column": "id", "after": -1, "upto": 3} if mode == "incremental" else {}
    result = Verifier(conn, spec, primary_key=("id",)).run(mode, sample_percent=100.0, **window)  # type: ignore[arg-type]
    assert (result.rows_checked, result.mismatched, result.null_keys, result.expression_errors) == expected[0]
    # The stale rows themselves: `amount = 1.0` would also have selected the good 1.00 row of the same partition.
    assert sorted(e.primary_key["id"] for e in result.examples) == ["1", "3"]


def test_a_clean_unsafe_table_counts_every_leaf_row_by_row(conn: psycopg.Connection[Any]) -> None:
    spec = _table(conn, "numeric", ["1.0", "1.00"], index=False)
    conn.execute("DELETE FROM chunks WHERE id IN (1, 3)")  # the stale rows
    result = Verifier(conn, spec, primary_key=("id",)).run("full")
    assert result.clean and result.rows_checked == 2 and not result.examples
    rows = {p.plan.relation: p.rows for p in result.partitions if p.rows}
    assert rows == {
        f"public.chunks_p{partition_for('1.0', MODULUS)}": 1,
        f"public.chunks_p{partition_for('1.00', MODULUS)}": 1,
    }


class _Unpredicted(Verifier):
    """A verifier whose error prediction itself raises on every row: forces the value-by-value fallback."""

    def _raises(self) -> sql.Composable:
        return sql.SQL("(id / 0 = 0)")


@pytest.mark.parametrize(
    ("kind", "texts"),
    [("json", ['{"a":1}', '{"a": 1}']), ("point", ["(0,0)", "(-0,0)"])],
    ids=["json", "point"],
)
@pytest.mark.parametrize("mode", ["full", "sample", "incremental"])
def test_a_source_type_without_equality_is_verified_exactly(
    conn: psycopg.Connection[Any], kind: str, texts: list[str], mode: str
) -> None:
    """json and point have no equality operator: their bad rows are grouped by text, also in the fallback."""
    _list_table(conn, f"id bigint NOT NULL, payload {kind}, partition_key integer")
    # The premise: no equality operator, so nothing can be grouped by the value itself.
    with pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("SELECT payload FROM chunks GROUP BY payload")
    # Each spelling under its own text's key and under the other's: two stale rows, ids 1 and 3.
    with conn.cursor() as cursor:
        cursor.executemany(f"INSERT INTO chunks VALUES (%s, %s::{kind}, %s)", _crossed(texts))
    spec = KeySpec(source_column="payload", modulus=MODULUS)
    expected = reference(conn, spec)
    assert expected[0] == (4, 2, 0, 0)
    window = {"watermark_column": "id", "after": -1, "upto": 3} if mode == "incremental" else {}
    for kind_of_run, cache in ((Verifier, None), (Verifier, PlanCache()), (_Unpredicted, None)):
        verifier = kind_of_run(conn, spec, primary_key=("id",), plan_cache=cache)
        result = verifier.run(mode, sample_percent=100.0, **window)  # type: ignore[arg-type]
        assert _seen(result) == expected
        assert sorted(e.primary_key["id"] for e in result.examples) == ["1", "3"]
        assert {e.relation for e in result.examples} == {
            f"public.chunks_p{partition_for(text, MODULUS)}" for text in texts
        }

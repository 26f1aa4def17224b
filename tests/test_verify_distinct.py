"""Full verification by distinct source values: the path each partition takes, its plan, and exact bad counts."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.formula import parse_source
from exporter.hashtext import partition_for
from exporter.keyspec import KeyFormula, KeySpec
from exporter.report import TableHealth, render_json, render_text
from exporter.snapshot import CheckResult
from exporter.verify import Verifier
from tests.int_min import int_min_text
from tests.schema import INT_MIN_COLLECTION_ID, create_list_table, insert_rows, no_autovacuum, scalar, until_counted
from tests.test_verify_property import _pairs, reference

pytestmark = pytest.mark.versioned("verification")

PK = ("id", "collection_id", "partition_key")


def _indexed_table(conn: psycopg.Connection[Any], rows: int = 20_000, collections: int = 40) -> None:
    """10 single-value LIST partitions, a DEFAULT one, an index on collection_id, analyzed."""
    create_list_table(conn, modulus=10, trigger=None, default_partition=True)
    conn.execute("CREATE INDEX chunks_collection ON chunks (collection_id)")
    no_autovacuum(conn)
    insert_rows(conn, rows, modulus=10, collections=collections)


def _live(conn: psycopg.Connection[Any]) -> int:
    """What the statistics say the single-value partitions hold, by the verifier's rule (n_live_tup, else reltuples)."""
    return int(
        scalar(
            conn,
            "SELECT sum(CASE WHEN s.n_live_tup > 0 THEN s.n_live_tup ELSE greatest(c.reltuples, 0)::bigint END)"
            " FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.relname LIKE 'chunks_part_%%'",
        )
    )


def _stale(conn: psycopg.Connection[Any], ids: str, collection: str) -> None:
    """Move rows to another collection without fixing their key, as UPDATE drift does."""
    conn.execute(f"UPDATE chunks SET collection_id = '{collection}' WHERE id IN ({ids})")


def _other_key_uuid(modulus: int, not_key: int) -> str:
    """A uuid whose safe key is not `not_key`."""
    for n in range(1000):
        candidate = f"00000000-0000-4000-8000-{n:012x}"
        if partition_for(candidate, modulus) != not_key:
            return candidate
    raise AssertionError("no uuid found")


def test_single_value_partitions_with_an_index_take_the_loose_scan(conn: psycopg.Connection[Any]) -> None:
    _indexed_table(conn)
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate
    live_before = _live(conn)
    result = Verifier(conn, KeySpec(modulus=10), primary_key=PK).run("full")
    paths = {p.plan.relation: p.plan.path for p in result.partitions}
    assert paths["public.chunks_default"] == "group-by"
    assert {paths[f"public.chunks_part_{k:02d}"] for k in range(10)} == {"loose-index-scan"}
    assert result.clean and result.mismatched == 0
    loose = [p for p in result.partitions if p.plan.path == "loose-index-scan"]
    # 40 collections spread over 10 partitions: each partition listed exactly its own collections.
    assert sum(p.distinct_values for p in loose) == 40
    # Rows come from statistics (n_live_tup; it can count a bulk load twice when ANALYZE beats the loader's
    # statistics flush, so compare with what the server says rather than with 20,000), or exactly on request.
    assert all(not p.rows_exact for p in loose) and result.rows_estimated == result.rows_checked
    assert result.rows_checked in (live_before, _live(conn))
    exact = Verifier(conn, KeySpec(modulus=10), exact_rows=True).run("full")
    assert (exact.rows_checked, exact.rows_estimated) == (20_000, 0)
    assert all(p.rows_exact for p in exact.partitions)
    default = next(p for p in result.partitions if p.plan.relation == "public.chunks_default")
    assert "DEFAULT" in default.plan.reason and default.rows_exact


def test_explain_shows_index_scans_not_a_sequential_scan(conn: psycopg.Connection[Any]) -> None:
    """If a planner change sends the loose scan to a sequential scan, this fails."""
    _indexed_table(conn)
    conn.execute("DROP TABLE chunks_default")
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate
    plan = Verifier(conn, KeySpec(modulus=10)).explain_full()
    assert "Recursive Union" in plan
    assert "Seq Scan" not in plan, plan
    assert "Index Only Scan using chunks_part_" in plan or "Index Scan using chunks_part_" in plan


def test_loose_scan_counts_stale_rows_exactly_and_fetches_their_primary_keys(conn: psycopg.Connection[Any]) -> None:
    _indexed_table(conn)
    key = int(scalar(conn, "SELECT partition_key FROM chunks WHERE id = 5"))
    moved = _other_key_uuid(10, key)
    _stale(conn, "5", moved)
    same_partition = [
        int(r[0])
        for r in conn.execute(
            "SELECT id FROM chunks WHERE partition_key = %s AND id <> 5 ORDER BY id LIMIT 3", (key,)
        ).fetchall()
    ]
    _stale(conn, ", ".join(map(str, same_partition)), moved)
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate
    result = Verifier(conn, KeySpec(modulus=10), primary_key=PK).run("full")
    part = next(p for p in result.partitions if p.plan.relation == f"public.chunks_part_{key:02d}")
    assert part.plan.path == "loose-index-scan"
    assert (result.mismatched, result.null_keys, result.expression_errors) == (4, 0, 0)
    assert len(result.bad_pairs) == 1
    pair = result.bad_pairs[0]
    assert (pair.kind, pair.stored_key, pair.source, pair.expected_key, pair.rows) == (
        "mismatch",
        key,
        (moved,),
        partition_for(moved, 10),
        4,
    )
    assert sorted(int(e.primary_key["id"]) for e in result.examples) == sorted([5, *same_partition])


def test_legacy_int_min_is_predicted_per_value(conn: psycopg.Connection[Any]) -> None:
    """The one value whose hashtext is INT_MIN counts as an error per row, on the loose path, without bisecting."""
    _indexed_table(conn)
    # 48 under the safe formula is 8 with modulus 10 (|INT_MIN % 10| = 8): the row sits in partition 8.
    conn.execute(
        "INSERT INTO chunks (id, collection_id, partition_key) OVERRIDING SYSTEM VALUE "
        "VALUES (90001, %s, 8), (90002, %s, 8), (90003, %s, 8)",
        (INT_MIN_COLLECTION_ID,) * 3,
    )
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate
    result = Verifier(conn, KeySpec(modulus=10, formula="legacy"), primary_key=PK).run("full")
    assert next(p for p in result.partitions if p.plan.relation == "public.chunks_part_08").plan.path == (
        "loose-index-scan"
    )
    assert (result.expression_errors, result.mismatched, result.null_keys) == (3, 0, 0)
    assert [(b.kind, b.rows, b.source) for b in result.bad_pairs] == [("error", 3, (INT_MIN_COLLECTION_ID,))]
    assert {e.primary_key["id"] for e in result.examples} == {"90001", "90002", "90003"}
    assert all("integer out of range" in (e.error or "") for e in result.examples)


class _Unpredicted(Verifier):
    """A verifier that predicts no error: stands for a formula whose errors no rule foresees."""

    def _raises(self) -> sql.Composable:
        return sql.SQL("false")


def test_an_unpredicted_error_is_isolated_per_distinct_value(conn: psycopg.Connection[Any]) -> None:
    _indexed_table(conn)
    conn.execute(
        "INSERT INTO chunks (id, collection_id, partition_key) OVERRIDING SYSTEM VALUE VALUES (90001, %s, 8)",
        (INT_MIN_COLLECTION_ID,),
    )
    _stale(conn, "7", _other_key_uuid(10, int(scalar(conn, "SELECT partition_key FROM chunks WHERE id = 7"))))
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate
    spec = KeySpec(modulus=10, formula="legacy")
    predicted = Verifier(conn, spec, primary_key=PK, exact_rows=True).run("full")
    fallback = _Unpredicted(conn, spec, primary_key=PK, exact_rows=True).run("full")
    assert (fallback.rows_checked, fallback.mismatched, fallback.expression_errors) == (20_001, 1, 1)
    assert sorted(fallback.bad_pairs, key=str) == sorted(predicted.bad_pairs, key=str)
    error = next(e for e in fallback.examples if e.kind == "error")
    assert error.primary_key["id"] == "90001" and "integer out of range" in (error.error or "")
    # Sample and incremental fall back the same way, keeping their per-row counts.
    window = _Unpredicted(conn, spec, primary_key=PK).run("incremental", watermark_column="id", after=0, upto=90001)
    assert (window.rows_checked, window.mismatched, window.expression_errors) == (20_001, 1, 1)


def test_no_index_and_many_distinct_values_fall_back_to_group_by(conn: psycopg.Connection[Any]) -> None:
    create_list_table(conn, modulus=4, trigger=None)
    insert_rows(conn, 4000, modulus=4, collections=50)
    conn.execute("VACUUM ANALYZE chunks")
    plans = {p.plan.relation: p.plan for p in Verifier(conn, KeySpec(modulus=4)).run("full").partitions}
    assert plans["public.chunks_part_00"].path == "group-by"
    assert "no btree index leads with collection_id" in plans["public.chunks_part_00"].reason
    conn.execute("CREATE INDEX ON chunks (collection_id)")
    conn.execute(
        "INSERT INTO chunks (collection_id, partition_key) SELECT u, abs(hashtext(u::text) % 4) FROM"
        " (SELECT md5('unique' || g)::uuid AS u FROM generate_series(1, 4000) g) s"
    )
    conn.execute("VACUUM ANALYZE chunks")
    result = Verifier(conn, KeySpec(modulus=4)).run("full")
    crowded = result.partitions[0].plan
    assert crowded.path == "group-by" and "distinct values" in crowded.reason
    assert result.rows_checked == 8000 and result.rows_estimated == 0
    # The key is fixed by each partition's bound, so only collection_id is grouped (the index can serve that pass
    # on big partitions; on these small ones the planner rightly prefers a sequential scan).
    assert 'GROUP BY "collection_id"' in Verifier(conn, KeySpec(modulus=4)).full_passes()[1][0][0].as_string(conn)


def test_report_and_json_say_which_path_each_partition_took(conn: psycopg.Connection[Any]) -> None:
    _indexed_table(conn)
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate
    result = Verifier(conn, KeySpec(modulus=10), primary_key=PK).run("full")
    check = CheckResult("t1", "public.chunks", "verification_full", True, 0.1, 1.0, 1.0, 3600.0, payload=result)
    health = TableHealth("t1", "public.chunks", True, {"verification_full": check})
    lines = render_text(health, now=2.0).splitlines()
    assert "    Paths: 1 group-by, 10 loose-index-scan" in lines
    assert f"    Rows From Statistics (loose-scanned partitions): {result.rows_estimated:,}" in lines
    assert "    group-by x1: DEFAULT partition: keys vary per row" in lines
    table = json.loads(json.dumps(render_json(health)))
    paths = {p["relation"]: p["path"] for p in table["verification"]["partitions"]}
    assert paths["public.chunks_part_03"] == "loose-index-scan" and paths["public.chunks_default"] == "group-by"
    assert table["verification"]["rows_estimated"] == result.rows_estimated > 0


def _two_columns(modulus: int, formula: KeyFormula = "safe", separator: str = ":") -> KeySpec:
    """A composite key over (collection_id, document_id), as semantik's COALESCE formula."""
    source = parse_source(f"coalesce(collection_id::text, '') || '{separator}' || coalesce(document_id::text, '')")
    return KeySpec(source=source, modulus=modulus, formula=formula)


def test_composite_keys_use_distinct_tuples_and_a_two_column_index(conn: psycopg.Connection[Any]) -> None:
    spec = _two_columns(4)
    assert spec.source_columns == ("collection_id", "document_id")
    conn.execute(
        "CREATE TABLE chunks (id bigint NOT NULL, collection_id text, document_id text, partition_key integer)"
        " PARTITION BY LIST (partition_key)"
    )
    for key in range(4):
        conn.execute(f"CREATE TABLE chunks_p{key} PARTITION OF chunks FOR VALUES IN ({key})")
    # The index leads with the source columns in the other order: the scan must follow the index's order.
    conn.execute("CREATE INDEX ON chunks (document_id, collection_id)")
    no_autovacuum(conn)
    formula = "abs(hashtext(coalesce(c::text, '') || ':' || coalesce(d::text, '')) % 4)"
    conn.execute(
        f"INSERT INTO chunks SELECT g, c, d, {formula} FROM (SELECT g, 'c' || (g % 7) AS c,"
        " CASE WHEN g % 11 = 0 THEN NULL ELSE 'd' || (g % 13) END AS d FROM generate_series(1, 3000) g) s"
    )
    # Stale: a document moved under rows without fixing the key (some stay right by chance; the reference knows).
    conn.execute("UPDATE chunks SET document_id = 'moved' WHERE id % 97 = 0")
    conn.execute("UPDATE chunks SET collection_id = NULL WHERE id % 89 = 0")
    counts, pairs = reference(conn, spec)
    result = Verifier(conn, spec, primary_key=("id",), exact_rows=True).run("full")
    assert {p.plan.path for p in result.partitions} == {"loose-index-scan"}
    assert result.partitions[0].plan.index_columns == ("document_id", "collection_id")
    assert (result.rows_checked, result.mismatched, result.null_keys, result.expression_errors) == counts
    assert counts[1] > 0
    assert _pairs(result) == pairs
    plan = Verifier(conn, spec).explain_full().splitlines()
    # Both descents of every partition's recursive union use the index; only the NULL-source pass may scan.
    assert sum("Index Only Scan using" in line or "Index Scan using" in line for line in plan) >= 8
    for number, line in enumerate(plan):
        if "Seq Scan" in line:
            assert "IS NULL" in plan[number + 1], "\n".join(plan)


def test_composite_legacy_int_min_is_predicted_not_evaluated_per_value(
    conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The legacy composite formula raises where hashtext of the whole source text is INT_MIN: predicted too."""
    spec = _two_columns(4, "legacy", separator="")
    text = int_min_text()
    conn.execute(
        "CREATE TABLE chunks (id bigint NOT NULL, collection_id text, document_id text, partition_key integer)"
    )
    conn.execute(
        "INSERT INTO chunks VALUES (1, %s, %s, 0), (2, %s, %s, 1),"
        " (3, 'a', 'b', 1), (4, 'a', 'b', 1), (5, 'a', NULL, 2)",
        (text[:5], text[5:], text[:5], text[5:]),
    )
    counts, pairs = reference(conn, spec)
    result = Verifier(conn, spec, primary_key=("id",)).run("full")
    assert (result.rows_checked, result.mismatched, result.null_keys, result.expression_errors) == counts
    assert counts[3] == 2 and _pairs(result) == pairs
    assert sorted((b.kind, b.source, b.rows) for b in result.bad_pairs if b.kind == "error") == [
        ("error", (text[:5], text[5:]), 1),
        ("error", (text[:5], text[5:]), 1),
    ]
    assert "no rule predicted" not in caplog.text


def test_select_on_the_table_alone_is_enough_and_other_leaves_are_read_in_one_pruned_pass(
    conn: psycopg.Connection[Any],
) -> None:
    """The least-privileged role has SELECT on the table, not on its partitions: nothing reads a partition by name."""
    create_list_table(conn, modulus=4, trigger=None, default_partition=False)
    conn.execute("DROP TABLE chunks_part_02, chunks_part_03")
    conn.execute("CREATE TABLE chunks_pair PARTITION OF chunks FOR VALUES IN (2, 3)")
    conn.execute("CREATE TABLE chunks_default PARTITION OF chunks DEFAULT")
    conn.execute("CREATE INDEX ON chunks (collection_id)")
    no_autovacuum(conn)
    insert_rows(conn, 4000, modulus=4, collections=8)
    conn.execute("INSERT INTO chunks (collection_id, partition_key) VALUES (md5('x')::uuid, 9), (md5('y')::uuid, 1)")
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate
    role = f"partkey_only_table_{conn.info.backend_pid}"
    conn.execute(f"CREATE ROLE {role}")
    conn.execute(f"GRANT SELECT ON chunks TO {role}")
    try:
        conn.execute(f"SET ROLE {role}")
        verifier = Verifier(conn, KeySpec(modulus=4), primary_key=("id",))
        result = verifier.run("full")
        sample = verifier.run("sample", sample_percent=100)
        rest = conn.execute(sql.SQL("EXPLAIN ") + verifier._other_groups([0, 1])).fetchall()
    finally:
        conn.execute("RESET ROLE")
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
    paths = {p.plan.relation: p.plan.path for p in result.partitions}
    assert paths == {
        "public.chunks_default": "group-by",
        "public.chunks_pair": "group-by",
        "public.chunks_part_00": "loose-index-scan",
        "public.chunks_part_01": "loose-index-scan",
    }
    wrong = {(b.relation, b.stored_key) for b in result.bad_pairs}
    assert ("public.chunks_default", 9) in wrong and result.mismatched == sample.mismatched >= 1
    plan = "\n".join(str(r[0]) for r in rest)
    # The single-value partitions are pruned from the pass over the other leaves.
    assert "chunks_part_00" not in plan and "chunks_part_01" not in plan
    assert "chunks_pair" in plan and "chunks_default" in plan


def test_the_distinct_value_limit_sends_few_values_to_the_loose_scan_and_many_to_group_by(
    conn: psycopg.Connection[Any],
) -> None:
    """The limit is 0.1% of the rows by pg_stats (bench/verify_cost.py measured the crossover near 0.27%)."""
    create_list_table(conn, modulus=2, trigger=None)
    conn.execute("CREATE INDEX chunks_collection ON chunks (collection_id)")
    no_autovacuum(conn)
    # 20,000 rows per partition (ANALYZE reads them all, so n_distinct is exact): 10 and 100 collections.
    for key, collections in ((0, 10), (1, 100)):
        conn.execute(
            "INSERT INTO chunks (collection_id, partition_key) SELECT md5(%s || '-' || g %% %s)::uuid, %s"
            " FROM generate_series(1, 20000) g",
            (key, collections, key),
        )
    # The inserts must reach the statistics before VACUUM sets n_live_tup: counted after it, they double it.
    until_counted(conn, 40_000)
    conn.execute("VACUUM ANALYZE chunks")
    plans = {p.plan.relation: p.plan for p in Verifier(conn, KeySpec(modulus=2)).run("full").partitions}
    few, many = plans["public.chunks_part_00"], plans["public.chunks_part_01"]
    assert (few.path, few.estimated_distinct) == ("loose-index-scan", 10)
    assert (many.path, many.estimated_distinct) == ("group-by", 100)
    assert "about 100 distinct values in 20,000 rows" in many.reason


def test_many_bad_groups_on_the_loose_path_are_counted_in_batches_exactly(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every bad group's rows are counted with the index, several groups per statement, each count exact."""
    _indexed_table(conn)
    conn.execute("DROP TABLE chunks_default")
    # Move rows of 12 ids to 12 collections whose key is another partition: 12 bad groups (one per collection).
    for number, row_id in enumerate(range(1, 13)):
        key = int(scalar(conn, f"SELECT partition_key FROM chunks WHERE id = {row_id}"))
        moved = next(
            f"00000000-0000-4000-8000-{n:012x}"
            for n in range(number * 1000, number * 1000 + 1000)
            if partition_for(f"00000000-0000-4000-8000-{n:012x}", 10) != key
        )
        # Same collection for a few more rows of that partition: counts above 1.
        conn.execute(
            "UPDATE chunks SET collection_id = %s WHERE id IN (SELECT id FROM chunks WHERE partition_key = %s"
            " AND id >= %s ORDER BY id LIMIT %s)",
            (moved, key, row_id, number % 3 + 1),
        )
    conn.execute("VACUUM chunks")  # no pg_stats: no distinct-value estimate
    # Row by row in one statement (the safe formula cannot raise; the per-row reference is too slow for 20,000 rows
    # on PostgreSQL 11-14): every wrong row grouped by relation, stored key and collection.
    wrong = {
        (f"public.{relation}", stored, (collection,), expected): int(rows)
        for relation, stored, collection, expected, rows in conn.execute(
            "SELECT c.relname, t.partition_key, t.collection_id::text, abs(hashtext(t.collection_id::text) % 10),"
            " count(*) FROM chunks t JOIN pg_class c ON c.oid = t.tableoid"
            " WHERE t.partition_key <> abs(hashtext(t.collection_id::text) % 10) GROUP BY 1, 2, 3, 4"
        ).fetchall()
    }
    monkeypatch.setattr("exporter.verify.COUNT_BATCH", 5)
    statements: list[str] = []
    verifier = Verifier(conn, KeySpec(modulus=10), primary_key=PK, exact_rows=True)
    execute = conn.execute

    def spy(query: Any, *args: Any, **kwargs: Any) -> Any:
        text = query.as_string(conn) if isinstance(query, sql.Composable) else str(query)
        statements.append(text)
        return execute(query, *args, **kwargs)

    monkeypatch.setattr(conn, "execute", spy)
    result = verifier.run("full")
    monkeypatch.undo()
    assert {p.plan.path for p in result.partitions} == {"loose-index-scan"}
    assert (result.rows_checked, result.mismatched, result.null_keys, result.expression_errors) == (
        20_000,
        sum(wrong.values()),
        0,
        0,
    )
    assert len(wrong) == result.bad_pairs_total == 12
    assert {(b.relation, b.stored_key, b.source, b.expected_key): b.rows for b in result.bad_pairs} == wrong
    batches = [s for s in statements if s.startswith("SELECT 0, count(*)")]
    assert len(batches) == 3  # 12 groups, 5 per statement

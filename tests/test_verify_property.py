"""Equality proof: full verification by distinct values gives the row-by-row reference's counts and bad pairs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from exporter.hashtext import partition_for
from exporter.keyspec import KeyFormula, KeySpec
from exporter.verify import VerificationResult, Verifier
from exporter.verify_cache import PlanCache
from tests.int_min import INT_MIN, int_min_text
from tests.schema import no_autovacuum, scalar

pytestmark = pytest.mark.versioned("verification")

Pair = tuple[str, str, int | None, tuple[str | None, ...], int | None]  # kind, relation, stored, source, expected

# Shared by every example: each one's new table must invalidate what the previous one left (the exporter keeps one
# cache per table across schema changes).
CACHE = PlanCache()


@dataclass(frozen=True)
class Case:
    """One random table: its shape, its rows, and the formula it is verified against."""

    modulus: int
    partitioned: bool
    groups: tuple[tuple[int, ...], ...]  # the LIST values of each partition (one value: the loose-scan shape)
    default: bool
    index: bool
    analyze: bool
    formula: KeyFormula
    rows: tuple[tuple[str | None, int | None], ...]  # (source, stored key)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Skewed sources, stale and NULL keys, NULL sources, the INT_MIN value, multi-value and DEFAULT partitions."""
    modulus = draw(st.integers(2, 6))
    partitioned = draw(st.booleans())
    values = list(draw(st.permutations(range(modulus))))
    covered = values if not partitioned else values[: draw(st.integers(1, modulus))]
    groups: list[tuple[int, ...]] = []
    while covered:
        size = draw(st.sampled_from([1, 1, 1, 2, 3]))
        groups.append(tuple(covered[:size]))
        covered = covered[size:]
    default = partitioned and (draw(st.booleans()) or len(sum(groups, ())) < modulus)
    pool = draw(
        st.lists(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x30FF), max_size=6), min_size=1, max_size=8
        )
    )
    pool += [int_min_text()] * draw(st.integers(0, 1))
    sources = st.one_of(st.sampled_from(pool), st.none()) if draw(st.booleans()) else st.sampled_from(pool)
    keys = sorted(sum(groups, ())) if partitioned else list(range(modulus))
    # Keys the table can hold: any listed value; with a DEFAULT partition (or no partitions) also NULL and others.
    possible: list[int | None] = list(keys)
    if default or not partitioned:
        possible += [None, modulus + 7]
    formula: KeyFormula = draw(st.sampled_from(["safe", "legacy"]))
    rows = []
    for _ in range(draw(st.integers(0, 60))):
        source = draw(sources)
        correct = None if source is None else partition_for(source, modulus, "safe")
        # Mostly correct keys (a key the table cannot hold becomes a stale one), sometimes stale or NULL.
        stored = correct if draw(st.integers(0, 3)) and correct in possible else draw(st.sampled_from(possible))
        rows.append((source, stored))
    return Case(
        modulus=modulus,
        partitioned=partitioned,
        groups=tuple(groups),
        default=default,
        index=draw(st.booleans()),
        analyze=draw(st.booleans()),
        formula=formula,
        rows=tuple(rows),
    )


def build(conn: psycopg.Connection[Any], case: Case) -> None:
    """Create the case's table and load its rows."""
    conn.execute("DROP TABLE IF EXISTS chunks CASCADE")
    tail = " PARTITION BY LIST (partition_key)" if case.partitioned else ""
    conn.execute(f"CREATE TABLE chunks (id bigint NOT NULL, collection_id text, partition_key integer){tail}")
    if case.partitioned:
        for number, values in enumerate(case.groups):
            listed = ", ".join(map(str, values))
            conn.execute(f"CREATE TABLE chunks_p{number} PARTITION OF chunks FOR VALUES IN ({listed})")
        if case.default:
            conn.execute("CREATE TABLE chunks_default PARTITION OF chunks DEFAULT")
    if case.index:
        conn.execute("CREATE INDEX ON chunks (collection_id)")
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO chunks VALUES (%s, %s, %s)",
            [(number, source, key) for number, (source, key) in enumerate(case.rows)],
        )
    if case.analyze:
        conn.execute("ANALYZE chunks")


def reference(conn: psycopg.Connection[Any], spec: KeySpec) -> tuple[tuple[int, int, int, int], Counter[Pair]]:
    """Row by row: the server evaluates each row's expression alone; errors, then NULL keys, then mismatches."""
    texts = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in spec.source_columns)
    rows = conn.execute(
        sql.SQL(
            "SELECT c.relname, t.id, t.partition_key, {} FROM chunks t JOIN pg_class c ON c.oid = t.tableoid"
        ).format(texts)
    ).fetchall()
    checked = mismatched = nulls = errors = 0
    pairs: Counter[Pair] = Counter()
    for relation, row_id, stored, *values in rows:
        source = tuple(values)
        checked += 1
        probe = sql.SQL("SELECT {} FROM ONLY {} WHERE id = {}").format(
            spec.expression(), sql.Identifier(relation), sql.Literal(row_id)
        )
        try:
            with conn.transaction():
                row = conn.execute(probe).fetchone()
                assert row is not None
                expected = row[0]
        except psycopg.DataError:
            errors += 1
            pairs[("error", f"public.{relation}", stored, source, None)] += 1
            continue
        if stored is None:
            nulls += 1
            pairs[("null", f"public.{relation}", stored, source, expected)] += 1
        elif stored != expected:
            mismatched += 1
            pairs[("mismatch", f"public.{relation}", stored, source, expected)] += 1
    return (checked, mismatched, nulls, errors), pairs


def _path(path: str) -> str:
    """A leaf's path with known-values (a remembered group-by leaf) shown as the group-by it replaces."""
    return "group-by" if path == "known-values" else path


def _pairs(result: VerificationResult) -> Counter[Pair]:
    """The verifier's bad pairs with their row counts, in the reference's shape."""
    out: Counter[Pair] = Counter()
    for pair in result.bad_pairs:
        out[(pair.kind, pair.relation, pair.stored_key, pair.source, pair.expected_key)] += pair.rows
    return out


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_full_verification_equals_the_row_by_row_reference(conn: psycopg.Connection[Any], case: Case) -> None:
    build(conn, case)
    spec = KeySpec(modulus=case.modulus, formula=case.formula)
    counts, pairs = reference(conn, spec)
    exact = Verifier(conn, spec, primary_key=("id",), exact_rows=True).run("full")
    assert (exact.rows_checked, exact.mismatched, exact.null_keys, exact.expression_errors) == counts
    assert _pairs(exact) == pairs
    assert exact.bad_pairs_total == len(pairs)
    # With row counts from statistics, every bad count and pair is still exact.
    # Twice through the shared plan cache: a miss for this new table, then a hit.
    for _ in range(2):
        fast = Verifier(conn, spec, primary_key=("id",), plan_cache=CACHE).run("full")
        assert (fast.mismatched, fast.null_keys, fast.expression_errors) == counts[1:]
        assert _pairs(fast) == pairs
        # A group-by leaf read by the values the first cached run remembered is the same decision.
        assert [_path(p.plan.path) for p in fast.partitions] == [p.plan.path for p in exact.partitions]
    # Incremental over every row keeps row semantics through its grouped evaluation.
    window = Verifier(conn, spec).run("incremental", watermark_column="id", after=-1, upto=len(case.rows))
    assert (window.rows_checked, window.mismatched, window.null_keys, window.expression_errors) == counts
    # The shape the loose scan is for takes it (no statistics yet, so no distinct-value estimate says otherwise).
    paths = {part.plan.relation: part.plan.path for part in exact.partitions}
    for number, values in enumerate(case.groups if case.partitioned else ()):
        shape_fits = case.index and not case.analyze and len(values) == 1
        assert (paths[f"public.chunks_p{number}"] == "loose-index-scan") == shape_fits or case.analyze
    assert paths.get("public.chunks_default", "group-by") == paths.get("public.chunks", "group-by") == "group-by"
    # Examples belong to bad rows, at most the limit.
    assert len(exact.examples) == min(10, sum(pairs.values()))


def test_the_searched_int_min_text_raises_under_the_legacy_formula_on_the_server(conn: psycopg.Connection[Any]) -> None:
    """The property test's INT_MIN value is real on this server, not only in the Python port."""
    text = int_min_text()
    assert scalar(conn, "SELECT hashtext(%s)", (text,)) == INT_MIN
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        conn.execute("SELECT abs(hashtext(%s)) %% 100", (text,))


def test_the_reference_sees_every_kind_of_bad_row(conn: psycopg.Connection[Any]) -> None:
    """The reference itself can fail: a hand-built case with one row of each kind."""
    text = int_min_text()
    case = Case(
        modulus=3,
        partitioned=True,
        groups=((0,), (1, 2)),
        default=True,
        index=True,
        analyze=True,
        formula="legacy",
        rows=(("a", partition_for("a", 3)), ("a", None), (text, 2), ("b", (partition_for("b", 3) + 1) % 3), (None, 1)),
    )
    build(conn, case)
    counts, pairs = reference(conn, KeySpec(modulus=3, formula="legacy"))
    assert counts == (5, 2, 1, 1)
    assert sorted(kind for kind, *_ in pairs) == ["error", "mismatch", "mismatch", "null"]


Change = tuple[str, str | None, int | None]  # ("insert" | "delete" | "move", source, key)


@st.composite
def changed_cases(draw: st.DrawFn) -> tuple[Case, tuple[Change, ...]]:
    """A case and the writes between two verifications: new rows (stale ones with values good elsewhere, NULL
    sources, the INT_MIN value), deleted rows, and every row of a value moved to another key."""
    case = draw(cases())
    keys: list[int | None] = [*(sorted(sum(case.groups, ())) if case.partitioned else range(case.modulus))]
    if case.default or not case.partitioned:
        keys += [None, case.modulus + 7]
    seen = sorted({source for source, _ in case.rows if source is not None}) or ["fresh"]
    sources = st.one_of(st.sampled_from(seen), st.sampled_from(["fresh", "other", int_min_text()]), st.none())
    changes = draw(
        st.lists(
            st.tuples(st.sampled_from(["insert", "insert", "delete", "move"]), sources, st.sampled_from(keys)),
            max_size=6,
        )
    )
    return case, tuple(changes)


def _apply(conn: psycopg.Connection[Any], changes: tuple[Change, ...], first_id: int) -> None:
    """Write the changes (moves change the key of every row of a source: a row moves to another partition)."""
    for number, (kind, source, key) in enumerate(changes):
        if kind == "insert":
            conn.execute("INSERT INTO chunks VALUES (%s, %s, %s)", (first_id + number, source, key))
        elif kind == "delete":
            conn.execute("DELETE FROM chunks WHERE collection_id IS NOT DISTINCT FROM %s", (source,))
        else:
            conn.execute(
                "UPDATE chunks SET partition_key = %s WHERE collection_id IS NOT DISTINCT FROM %s", (key, source)
            )


def _same_as_reference(conn: psycopg.Connection[Any], spec: KeySpec, result: VerificationResult) -> None:
    """Every count and bad pair of RESULT is the row-by-row reference's (rows exact on the paths that count)."""
    counts, pairs = reference(conn, spec)
    assert (result.mismatched, result.null_keys, result.expression_errors) == counts[1:]
    assert _pairs(result) == pairs
    assert result.bad_pairs_total == len(pairs)
    # Examples: as many as the limit allows, each a real bad row of the pair it names, none twice.
    assert len(result.examples) == min(10, sum(pairs.values()))
    assert len({(e.relation, e.primary_key["id"]) for e in result.examples}) == len(result.examples)
    for example in result.examples:
        source = scalar(conn, "SELECT collection_id FROM chunks WHERE id = %s", (int(example.primary_key["id"]),))
        assert pairs[(example.kind, example.relation, example.stored_key, (source,), example.expected_key)] > 0
    for part in result.partitions:
        if part.plan.path == "known-values":
            assert part.rows_exact
            expected = scalar(conn, f"SELECT count(*) FROM ONLY {part.plan.relation}")
            assert part.rows == expected


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(changed=changed_cases())
def test_remembered_values_stay_exact_across_runs_with_writes_between(
    conn: psycopg.Connection[Any], changed: tuple[Case, tuple[Change, ...]]
) -> None:
    """Runs through one plan cache: cold, warm (known values), after writes (new values grouped), warm again."""
    case, changes = changed
    build(conn, case)
    if case.partitioned:
        no_autovacuum(conn)  # an ANALYZE behind the test's back would change the fingerprint and the paths
    spec = KeySpec(modulus=case.modulus, formula=case.formula)
    cache = PlanCache()
    verifier = Verifier(conn, spec, primary_key=("id",), plan_cache=cache)
    first = verifier.run("full")
    _same_as_reference(conn, spec, first)
    second = Verifier(conn, spec, primary_key=("id",), plan_cache=cache).run("full")
    _same_as_reference(conn, spec, second)
    # Single-value partitions read by GROUP BY the first time take one aggregate of known values (PG 14+).
    remembered = conn.info.server_version >= 140000
    for before, after in zip(first.partitions, second.partitions, strict=True):
        single = before.plan.path == "group-by" and before.plan.list_value is not None and before.plan.index is None
        assert (after.plan.path == "known-values") == (single and remembered), (before.plan, after.plan)
    _apply(conn, changes, first_id=len(case.rows))
    third = Verifier(conn, spec, primary_key=("id",), plan_cache=cache).run("full")
    _same_as_reference(conn, spec, third)
    fourth = Verifier(conn, spec, primary_key=("id",), plan_cache=cache).run("full")
    _same_as_reference(conn, spec, fourth)

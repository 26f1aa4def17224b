"""The chunks table benchmarks and tests both build: LIST-partitioned with the legacy trigger, and its rows.

One copy for both: tests import it from here (tests/schema.py has the shapes only tests use), and bench/ imports
nothing from tests/.
"""

from __future__ import annotations

from typing import Any

import psycopg

from exporter import chunks_schema

# The key expression the application computes (abs() after %: never out of range).
SAFE = "abs(hashtext(collection_id::text) % {modulus})"


def create_list_table(
    conn: psycopg.Connection[Any],
    *,
    schema: str = "public",
    table: str = "chunks",
    modulus: int = 100,
    trigger: str | None = "parent",
    default_partition: bool = False,
) -> None:
    """LIST-partitioned chunks table with one partition per key and the legacy trigger."""
    conn.execute(chunks_schema.chunks_table(f"{schema}.{table}"))
    for key in range(modulus):
        conn.execute(
            f"CREATE TABLE {schema}.{table}_part_{key:02d} PARTITION OF {schema}.{table} FOR VALUES IN ({key})"
        )
    if default_partition:
        conn.execute(f"CREATE TABLE {schema}.{table}_default PARTITION OF {schema}.{table} DEFAULT")
    if trigger is None:
        return
    conn.execute(chunks_schema.LEGACY_TRIGGER_FUNCTION.format(schema=schema, modulus=modulus))
    if trigger == "parent":
        conn.execute(
            f"CREATE TRIGGER set_partition_key BEFORE INSERT ON {schema}.{table} "
            f"FOR EACH ROW EXECUTE FUNCTION {schema}.compute_partition_key()"
        )
    else:
        for key in range(modulus):
            conn.execute(
                f"CREATE TRIGGER set_partition_key BEFORE INSERT ON {schema}.{table}_part_{key:02d} "
                f"FOR EACH ROW EXECUTE PROCEDURE {schema}.compute_partition_key()"
            )


def insert_rows(
    conn: psycopg.Connection[Any],
    count: int,
    *,
    schema: str = "public",
    table: str = "chunks",
    collections: int = 50,
    modulus: int = 100,
    supply_key: bool = True,
) -> None:
    """Insert rows over a fixed set of collections, with correct keys."""
    key_sql = f", {SAFE.format(modulus=modulus)}" if supply_key else ""
    key_col = ", partition_key" if supply_key else ""
    conn.execute(
        f"""INSERT INTO {schema}.{table} (collection_id{key_col}, content)
            SELECT collection_id{key_sql}, 'chunk ' || g
            FROM (SELECT g, md5((g % {collections})::text)::uuid AS collection_id
                  FROM generate_series(1, {count}) g) s"""
    )

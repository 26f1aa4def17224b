"""The real application's chunks table (tests/fixtures/semantik_chunks.sql) on a test database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "semantik_chunks.sql"
COLUMNS = {"id", "collection_id", "document_id", "chunk_index", "partition_key"}
COMPOSITE = "abs(hashtext(collection_id || ':' || COALESCE(document_id, chunk_index, id, 'null')) % 100)"
HELPER = "abs(hashtext(collection_id) % 100)"


def create_semantik(conn: psycopg.Connection[Any], partitions: int = 100) -> None:
    """The DDL as the application runs it, then its LIST partitions chunks_part_00..99 (PG 13+: parent trigger)."""
    conn.execute(FIXTURE.read_text())
    for number in range(partitions):
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF chunks FOR VALUES IN ({})").format(
                sql.Identifier(f"chunks_part_{number:02d}"), sql.Literal(number)
            )
        )

"""Discovered tables get a watermark column for incremental verification when the catalog has an obvious one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.cli import main
from exporter.config import parse_config
from exporter.discovery import discover
from exporter.verify import VerificationResult
from tests.schema import SAFE, create_list_table, insert_rows
from tests.test_discovery import target_config, write_config


def keyed(conn: psycopg.Connection[Any], table: str, columns: str) -> None:
    """A plain table with these COLUMNS, collection_id and a CHECK-kept key (found by discovery on PG 11-18)."""
    # The constraint named here: the server's own name for a column CHECK differs between versions.
    check = f"CONSTRAINT {table}_key_check CHECK (partition_key = {SAFE.format(modulus=10)})"
    conn.execute(f"CREATE TABLE {table} ({columns}, collection_id uuid NOT NULL, partition_key integer {check})")


def watermarks(conn: psycopg.Connection[Any], dsn: str) -> dict[str, tuple[str | None, str]]:
    """Each discovered table's picked column and the reason given."""
    found, _ = discover(conn, target_config(dsn))
    return {f.table.label: (f.table.monotonic_column, f.watermark.reason) for f in found}


@pytest.mark.versioned("watermark catalog reads")
def test_identity_serial_and_now_columns_are_picked_with_the_reason(conn: psycopg.Connection[Any], dsn: str) -> None:
    """Identity or serial in the primary key first, else an indexed timestamptz DEFAULT now(); the reason says which."""
    # id identity leads the PK; created_at DEFAULT now() is ignored for it. PG 11/12 keep the trigger per partition.
    create_list_table(conn, modulus=4, trigger="parent" if conn.info.server_version >= 130000 else "partitions")
    keyed(conn, "serials", "id serial PRIMARY KEY, created_at timestamptz DEFAULT now()")
    keyed(conn, "stamped", "ref uuid PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP")
    conn.execute("CREATE INDEX stamped_created_at ON stamped (created_at)")
    assert watermarks(conn, dsn) == {
        "public.chunks": ("id", "on id: identity column in the primary key, leads index chunks_pkey"),
        "public.serials": (
            "id",
            "on id: serial column in the primary key (DEFAULT nextval('serials_id_seq'::regclass)), "
            "leads index serials_pkey",
        ),
        "public.stamped": (
            "created_at",
            "on created_at: timestamptz with DEFAULT CURRENT_TIMESTAMP, leads index stamped_created_at",
        ),
    }


def test_incremental_is_off_with_the_reason_when_nothing_is_obvious(conn: psycopg.Connection[Any], dsn: str) -> None:
    """No candidate, an unindexed one, or two: off, and the report says why and what to do."""
    keyed(conn, "bare", "ref uuid PRIMARY KEY, id bigint, seen timestamptz")  # no default: nothing keeps it growing
    keyed(conn, "unindexed", "ref uuid PRIMARY KEY, created_at timestamptz DEFAULT now()")
    keyed(conn, "twice", "ref uuid PRIMARY KEY, created_at timestamptz DEFAULT now(), seen timestamptz DEFAULT now()")
    conn.execute("CREATE INDEX ON twice (created_at)")
    conn.execute("CREATE INDEX ON twice (seen)")
    keyed(conn, "offkey", "id bigint GENERATED ALWAYS AS IDENTITY, ref uuid PRIMARY KEY")  # identity, not in the PK
    assert watermarks(conn, dsn) == {
        "public.bare": (
            None,
            "off: no identity or serial column in the primary key and no timestamptz column with DEFAULT now(); "
            "set monotonic_column in tables: to turn it on",
        ),
        "public.offkey": (
            None,
            "off: no identity or serial column in the primary key and no timestamptz column with DEFAULT now(); "
            "set monotonic_column in tables: to turn it on",
        ),
        "public.twice": (None, "off: several candidates (created_at, seen); set monotonic_column in tables: to choose"),
        "public.unindexed": (
            None,
            "off: created_at (timestamptz with DEFAULT now()) leads no index, so every incremental run would read "
            "the whole table; index it or set monotonic_column in tables:",
        ),
    }


def test_report_discover_says_which_column_and_a_configured_entry_wins(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """report --discover prints the watermark under each table (text and JSON); a configured table keeps its own."""
    create_list_table(conn, modulus=4)
    keyed(conn, "bare", "ref uuid PRIMARY KEY")
    config = write_config(tmp_path, dsn)
    config.write_text(config.read_text().replace("tables: auto", "tables: [auto, {table: chunks, modulus: 4}]"))
    assert main(["report", "--config", str(config), "--discover"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:5] == [
        "  watch public.chunks (key partition_key): configured in tables:",
        "        incremental off: no monotonic_column in tables:",
        "  watch public.bare (key partition_key): discovered, kept by CHECK bare_key_check "
        "= abs(hashtext(collection_id) % 10)",
        "        incremental off: no identity or serial column in the primary key and no timestamptz column with "
        "DEFAULT now(); set monotonic_column in tables: to turn it on",
    ]
    config.write_text(config.read_text().replace("[auto, {table: chunks, modulus: 4}]", "auto"))
    assert main(["report", "--config", str(config), "--discover", "--format", "json"]) == 0
    tables = {t["table"]: t for t in json.loads(capsys.readouterr().out)["targets"][0]["discovery"]["tables"]}
    assert tables["public.chunks"]["monotonic_column"] == "id"
    assert (
        tables["public.chunks"]["incremental"] == "on id: identity column in the primary key, leads index chunks_pkey"
    )
    assert tables["public.bare"]["monotonic_column"] is None


def test_a_discovered_table_is_verified_incrementally(conn: psycopg.Connection[Any], dsn: str) -> None:
    """The picked column drives the incremental check: rows inserted after the first run are the ones checked."""
    create_list_table(conn, modulus=4)
    insert_rows(conn, 50, modulus=4)
    exporter = Exporter(parse_config(f'targets:\n  - name: t1\n    dsn: "{dsn}"\n    tables: auto\n', "<test>"))
    try:
        exporter.discover_now()
        runner = exporter.runners[("t1", "public.chunks", "verification_incremental")]
        first = runner.run()
        assert first.success and isinstance(first.payload, VerificationResult)
        assert first.payload.rows_checked == 0  # the first run only sets the watermark
        insert_rows(conn, 30, modulus=4)
        second = runner.run()
    finally:
        exporter.stop()
    assert second.success and isinstance(second.payload, VerificationResult)
    assert second.payload.rows_checked == 30
    assert second.payload.mismatched == 0

"""partkey-migrate on the real application's DDL: it writes the safe composite formula, keeps the function's
attributes, and downgrade restores the function byte for byte (or keeps the safe one when asked)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from exporter.formula_catalog import table_formulas
from exporter.keyspec import KeySpec
from migrations.cli import main
from tests.formula.semantik import COMPOSITE, create_semantik

FUNCTION_SQL = (
    "SELECT pg_get_functiondef('public.compute_partition_key'::regproc), "
    "obj_description('public.compute_partition_key'::regproc, 'pg_proc')"
)


def _places(conn: psycopg.Connection[Any]) -> dict[str, tuple[str | None, bool]]:
    """kind -> (normalised formula, overflows) of every place on chunks."""
    found = table_formulas(conn, KeySpec())
    assert found is not None
    return {p.kind: (p.normalised, bool(p.formula and p.formula.overflows)) for p in found.places}


def _setup(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    create_semantik(conn, partitions=100)
    conn.execute("ALTER FUNCTION compute_partition_key() SECURITY DEFINER SET search_path = public")
    conn.execute("COMMENT ON FUNCTION compute_partition_key() IS 'keys chunks'")
    row = conn.execute(FUNCTION_SQL).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def test_keep_trigger_writes_the_safe_composite_and_downgrade_restores_it(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """keep-trigger: only the body changes (attributes, comment kept); downgrade puts the original back exactly."""
    original, comment = _setup(conn)
    assert main(["upgrade", "--dsn", dsn, "--strategy", "keep-trigger", "-q"]) == 0
    assert _places(conn)["trigger"] == (COMPOSITE, False)
    upgraded = conn.execute(FUNCTION_SQL).fetchone()
    assert upgraded is not None and upgraded[1] == comment
    assert "IMMUTABLE SECURITY DEFINER" in upgraded[0] and "SET search_path TO 'public'" in upgraded[0]
    assert upgraded[0] != original
    assert main(["downgrade", "--dsn", dsn, "-q"]) == 0
    assert conn.execute(FUNCTION_SQL).fetchone() == (original, comment)
    assert _places(conn)["trigger"] == (COMPOSITE, True)


@pytest.mark.parametrize("keep_safe", [False, True])
def test_check_strategy_then_downgrade(conn: psycopg.Connection[Any], dsn: str, keep_safe: bool) -> None:
    """check: the CHECK holds the safe composite formula; downgrade re-creates the dropped function as captured,
    or with the safe body and the same attributes under --keep-safe-formula."""
    original, comment = _setup(conn)
    assert main(["upgrade", "--dsn", dsn, "--strategy", "check", "-q"]) == 0
    places = _places(conn)
    assert places["check"] == (COMPOSITE, False) and "trigger" not in places
    assert main(["downgrade", "--dsn", dsn, "-q", *(["--keep-safe-formula"] if keep_safe else [])]) == 0
    restored = conn.execute(FUNCTION_SQL).fetchone()
    assert restored is not None
    if keep_safe:
        assert _places(conn)["trigger"] == (COMPOSITE, False)
        assert "IMMUTABLE SECURITY DEFINER" in restored[0] and "SET search_path TO 'public'" in restored[0]
        assert restored[1] == comment
    else:
        assert restored == (original, comment)
        assert _places(conn)["trigger"] == (COMPOSITE, True)


def test_status_says_what_the_report_says(
    conn: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """partkey-migrate status lists the places, the helper's disagreement and what follows, as the report does."""
    create_semantik(conn, partitions=4)
    assert main(["status", "--dsn", dsn]) == 0
    text = capsys.readouterr().out
    assert "key formulas:" in text
    assert f"  Key Formula: {COMPOSITE} (from trigger set_partition_key -> public.compute_partition_key())" in text
    assert "    - function public.get_partition_key(): abs(hashtext(collection_id) % 100) [DISAGREES]" in text
    assert "the trigger recomputes the key with a different formula than the application sends" in text
    assert main(["status", "--dsn", dsn, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["formulas"]["drift"] is True and report["formulas"]["table_formula"] == COMPOSITE
    assert len(report["schema_formula_overflows"]) == 3

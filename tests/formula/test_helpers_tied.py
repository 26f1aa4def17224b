"""Key helper functions are tied to a table by what the parser sees, not by their parameter names: called from its
trigger, a DEFAULT or a CHECK, or the same formula (modulus, source types) as the one that keys its rows."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.formula_catalog import table_formulas
from exporter.formula_report import formula_lines
from exporter.introspect import detect
from exporter.keyspec import KeySpec
from tests.formula.semantik import create_semantik

pytestmark = pytest.mark.versioned("key helpers tied by the parser")


def _kinds(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, bool | None]]:
    found = table_formulas(conn, KeySpec())
    assert found is not None
    return {p.name: (p.kind, p.agrees) for p in found.places if p.name.startswith("function ")}


def _key_function(conn: psycopg.Connection[Any], signature: str, body: str) -> None:
    """CREATE FUNCTION signature: an IMMUTABLE SQL function whose key is SELECT body."""
    conn.execute(f"CREATE FUNCTION {signature} RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT {body} $$")


def test_semantik_helper_is_tied_by_modulus_and_source_type(conn: psycopg.Connection[Any]) -> None:
    """get_partition_key(varchar): same modulus, hashes a VARCHAR like chunks.collection_id: tied, and disagrees."""
    major = conn.info.server_version // 10000
    if major < 13:
        pytest.skip("the fixture's trigger sits on the partitioned parent (PG 13+)")
    create_semantik(conn, partitions=4)
    assert _kinds(conn) == {"function public.get_partition_key()": ("helper", False)}


def test_helpers_by_call_site_and_unattached(conn: psycopg.Connection[Any]) -> None:
    """A helper named like no column but called from the trigger is tied; one over another modulus, or over a type
    the table does not hash, is listed as not tied (no drift, no overflow from it)."""
    conn.execute("CREATE TABLE chunks (id bigint, tenant text, partition_key integer)")
    # Called from the trigger: tied, whatever its parameter is called.
    _key_function(conn, "key_of(v text)", "abs(hashtext(v) % 16)")
    conn.execute(
        """CREATE FUNCTION compute_partition_key() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN NEW.partition_key := abs(hashtext(NEW.tenant) % 16); PERFORM key_of(NEW.tenant); RETURN NEW; END $$"""
    )
    conn.execute(
        "CREATE TRIGGER set_partition_key BEFORE INSERT ON chunks "
        "FOR EACH ROW EXECUTE PROCEDURE compute_partition_key()"
    )
    # Parameter named like the column, but another modulus and it overflows: not this table's.
    _key_function(conn, "other_key(tenant text)", "abs(hashtext(tenant)) % 100")
    # Same modulus, but hashes a uuid: the table hashes text.
    _key_function(conn, "uuid_key(tenant uuid)", "abs(hashtext(tenant::text) % 16)")
    assert _kinds(conn) == {
        "function public.key_of()": ("helper", True),
        "function public.other_key()": ("unattached", None),
        "function public.uuid_key()": ("unattached", None),
    }
    info = detect(conn, KeySpec(source_column="tenant", modulus=16, auto=True))
    assert info.formula_drift is False
    assert info.formula_overflow is False  # other_key() overflows, but it is not this table's
    lines = formula_lines(info)
    assert (
        "    - function public.other_key(): abs(hashtext(tenant) % 100) "
        "[not tied to this table: not called from it, another modulus or source type] "
        "(written abs(hashtext(...)) % n: overflows on INT_MIN)"
    ) in lines


def test_helper_called_from_a_default_and_a_check(conn: psycopg.Connection[Any]) -> None:
    """A DEFAULT that asks a helper for the key ties it; so does a CHECK; a helper of another modulus then drifts."""
    _key_function(conn, "app_key(x text)", "abs(hashtext(x) % 8)")
    _key_function(conn, "old_key(x text)", "abs(hashtext(x) % 4)")
    conn.execute(
        "CREATE TABLE chunks (id bigint, tenant text, partition_key integer DEFAULT app_key('x'), "
        "CONSTRAINT key_ok CHECK (partition_key = abs(hashtext(tenant) % 8) AND old_key(tenant) >= 0))"
    )
    assert _kinds(conn) == {
        "function public.app_key()": ("helper", True),
        "function public.old_key()": ("helper", False),
    }

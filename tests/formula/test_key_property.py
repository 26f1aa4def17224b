"""exporter.hashtext and the key command agree with a real server: 10,000 random values per type (hypothesis,
in batches of 100 per example so each batch is one query), and VARCHAR ids in any spelling."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from exporter.cli import main
from exporter.formula import parse_expression
from exporter.hashtext import text_form
from exporter.keyspec import KeySpec
from tests.formula.semantik import COMPOSITE, create_semantik

BATCH = 100
EXAMPLES = 100  # x BATCH = 10,000 values per type
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Text the server can store: no NUL, no lone surrogates (not UTF-8); everything else, non-ASCII included.
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)
UUID_SPELLINGS = st.tuples(st.uuids(), st.sampled_from(["plain", "upper", "braces", "hex"]))


def _spell(value: uuid.UUID, how: str) -> str:
    """One of the spellings PostgreSQL's uuid input accepts."""
    return {"plain": str(value), "upper": str(value).upper(), "braces": "{" + str(value) + "}", "hex": value.hex}[how]


def _server_keys(conn: psycopg.Connection[Any], spec: KeySpec, columns: dict[str, tuple[str, list[Any]]]) -> list[Any]:
    """The server's key for each row of the given column arrays, in order."""
    # Literals, not %s parameters: the key expression holds a % operator that a parameterised query would misread.
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(sql.Literal(values), sql.SQL(type_name)) for type_name, values in columns.values()
    )
    aliases = sql.SQL(", ").join(sql.Identifier(name) for name in columns)
    query = sql.SQL("SELECT {} FROM unnest({}) WITH ORDINALITY AS v({}, n) ORDER BY n").format(
        spec.expression(), arrays, aliases
    )
    return [row[0] for row in conn.execute(query).fetchall()]


@PROPERTY
@given(values=st.lists(UUID_SPELLINGS, min_size=BATCH, max_size=BATCH))
def test_uuid_in_any_spelling(conn: psycopg.Connection[Any], values: list[tuple[uuid.UUID, str]]) -> None:
    """uuid columns: the key of any spelling is the key of uuid::text."""
    spec = KeySpec(source_column="u")
    spellings = [_spell(v, how) for v, how in values]
    server = _server_keys(conn, spec, {"u": ("uuid", spellings)})
    assert [spec.key_formula.key({"u": text_form(s, "uuid")}) for s in spellings] == server


@PROPERTY
@given(values=st.lists(TEXT, min_size=BATCH, max_size=BATCH))
def test_text_and_varchar_hashed_as_stored(conn: psycopg.Connection[Any], values: list[str]) -> None:
    """text and varchar, non-ASCII included: hashed exactly as stored, never normalised."""
    spec = KeySpec(source_column="t")
    expected = [spec.key_formula.key({"t": text_form(v, "character varying")}) for v in values]
    assert expected == _server_keys(conn, spec, {"t": ("varchar", values)})
    assert expected == _server_keys(conn, spec, {"t": ("text", values)})


@PROPERTY
@given(values=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=BATCH, max_size=BATCH))
def test_bigint(conn: psycopg.Connection[Any], values: list[int]) -> None:
    """bigint sources hash their decimal text."""
    spec = KeySpec(source_column="b", modulus=37)
    expected = [spec.key_formula.key({"b": text_form(str(v), "bigint")}) for v in values]
    assert expected == _server_keys(conn, spec, {"b": ("bigint", values)})


ROW = st.tuples(st.one_of(st.none(), TEXT), st.one_of(st.none(), TEXT), st.one_of(st.none(), st.integers(0, 10**6)))


@PROPERTY
@given(rows=st.lists(ROW, min_size=BATCH, max_size=BATCH))
def test_composite_with_nulls(
    conn: psycopg.Connection[Any], rows: list[tuple[str | None, str | None, int | None]]
) -> None:
    """semantik's composite formula with its COALESCE fallback: NULL parts, NULL keys, all as the server does."""
    spec = KeySpec().with_formula(parse_expression(COMPOSITE))
    columns: dict[str, tuple[str, list[Any]]] = {
        "collection_id": ("varchar", [r[0] for r in rows]),
        "document_id": ("varchar", [r[1] for r in rows]),
        "chunk_index": ("integer", [r[2] for r in rows]),
        "id": ("bigint", [7] * len(rows)),
    }
    expected = [
        spec.key_formula.key(
            {"collection_id": c, "document_id": d, "chunk_index": None if i is None else str(i), "id": "7"}
        )
        for c, d, i in rows
    ]
    assert expected == _server_keys(conn, spec, columns)


@pytest.mark.parametrize(
    "collection_id", ["550e8400-e29b-41d4-a716-446655440000", "550E8400-E29B-41D4-A716-446655440000", "Ünïcode/ß"]
)
def test_key_command_reads_the_real_formula_and_varchar(
    conn: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str], collection_id: str
) -> None:
    """With --dsn, `key` uses the trigger's composite formula and hashes the VARCHAR id as stored, in any spelling."""
    create_semantik(conn, partitions=1)
    server = conn.execute(
        "SELECT abs(hashtext(%s::varchar || ':' || 'doc-1'::varchar) %% 100)", (collection_id,)
    ).fetchone()
    assert server is not None
    args = ["key", "--dsn", dsn, "--value", f"collection_id={collection_id}", "--value", "document_id=doc-1"]
    assert main([*args, "--value", "chunk_index=3", "--null", "id"]) == 0
    assert capsys.readouterr().out.strip() == str(server[0])
    assert main(args) == 2
    assert "no value for chunk_index, id" in capsys.readouterr().err

"""The formula reader and normaliser on its own (pglast, no server): spellings, branches, refusals."""

from __future__ import annotations

import pytest

from exporter.formula import Column, Formula, FormulaError, Scope, count_overflows, parse_expression
from exporter.formula_body import read_plpgsql, read_sql_function, trigger_formula
from tests.formula.semantik import COLUMNS, COMPOSITE, FIXTURE

DB003 = "abs(hashtext(collection_id) % 100)"


@pytest.mark.parametrize(
    ("text", "normalised", "overflows"),
    [
        ("abs(hashtext(collection_id::text)) % 100", DB003, True),
        ("abs(hashtext(collection_id::text) % 100)", DB003, False),
        ("abs((hashtext((collection_id)::text) % 100))", DB003, False),  # pg_get_expr's spelling
        ("(abs(hashtext(collection_id)) % 100)::integer", DB003, True),
        ("pg_catalog.abs(pg_catalog.hashtext(collection_id::varchar) % 100::int)", DB003, False),
        ("mod(abs(hashtext(collection_id)), 100)", DB003, True),
        ("abs(hashtext(id::text) % 7)", "abs(hashtext(id) % 7)", False),
        (
            "abs(hashtext(((collection_id)::text || ':'::text) || (document_id)::text) % 100)",
            "abs(hashtext(collection_id || ':' || document_id) % 100)",
            False,
        ),
        (
            "abs(hashtext(collection_id || ':' || CASE WHEN document_id IS NOT NULL THEN document_id "
            "ELSE COALESCE(chunk_index::text, id::text, 'null') END)) % 100",
            COMPOSITE,
            True,
        ),
        (
            "abs(hashtext(CASE WHEN document_id IS NULL THEN collection_id || ':' || "
            "COALESCE(chunk_index::text, id::text, 'null') ELSE collection_id || ':' || document_id END) % 100)",
            COMPOSITE,
            False,
        ),
        (
            "abs(hashtext(collection_id || ':' || COALESCE(document_id, COALESCE(chunk_index::text, id::text), "
            "'null', 'never')) % 100)",
            COMPOSITE,
            False,
        ),
    ],
)
def test_spellings_normalise_to_one_formula(text: str, normalised: str, overflows: bool) -> None:
    """Casts, parentheses, abs(x) % n vs abs(x % n), mod(), nested COALESCE and CASE/IS NULL compare equal."""
    formula = parse_expression(text, Scope(columns=COLUMNS))
    assert formula.normalised == normalised
    assert formula.overflows is overflows


def test_safe_and_overflowing_spellings_give_the_same_key() -> None:
    """Both variants are one formula: same_key, different overflow flag."""
    legacy = parse_expression("abs(hashtext(collection_id)) % 100")
    safe = parse_expression("abs(hashtext(collection_id) % 100)")
    assert legacy.same_key(safe) and legacy != safe
    assert not safe.same_key(parse_expression("abs(hashtext(collection_id) % 10)"))
    assert not safe.same_key(parse_expression("abs(hashtext(collection_id || ':') % 100)"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("abs(hashtext((SELECT max(x) FROM t)::text)) % 100", "a subquery"),
        ("abs(hashtext(lower(collection_id))) % 100", "function lower() is outside the key formula family"),
        ("abs(hashtext(pg_sleep(1)::text)) % 100", "function pg_sleep() is outside the key formula family"),
        ("abs(hashtext(other.collection_id)) % 100", "other.collection_id is not a column of the table"),
        ("abs(hashtext(secret)) % 100", "secret is not a column of the table"),
        ("abs(hashtext(collection_id)) % 100 -- note", "comments are not allowed in a key expression"),
        ("abs(hashtext(/* x */ collection_id)) % 100", "comments are not allowed in a key expression"),
        ("abs(hashtext(collection_id)) % 100; DROP TABLE chunks", "a ';' is not allowed in a key expression"),
        ("abs(hashtext(collection_id)) % 0", "the modulus must be a positive integer constant"),
        ("abs(hashtext(collection_id)) % id", "the modulus must be a positive integer constant"),
        ("hashtext(collection_id) % 100", "expected abs(hashtext(...)) % n or abs(hashtext(...) % n)"),
        ("abs(hashtext(collection_id::uuid)) % 100", "cast to uuid is outside the key formula family"),
        ("abs(hashtext(collection_id)) % 100 FROM chunks", "expected exactly one expression, not a query"),
        ("abs(hashtext(collection_id) + 1) % 100", "expected abs(hashtext(...)) % n or abs(hashtext(...) % n)"),
        ("abs(hashtext(collection_id ", "not valid SQL"),
    ],
)
def test_hostile_expressions_are_refused(text: str, reason: str) -> None:
    """Anything outside the family's nodes and the table's columns is refused, with the reason."""
    with pytest.raises(FormulaError) as refused:
        parse_expression(text, Scope(columns=COLUMNS))
    assert str(refused.value).startswith(reason)


def test_real_trigger_function_with_if_and_coalesce() -> None:
    """The application's compute_partition_key(): IF/ELSE branches merged into one COALESCE formula."""
    definition = FIXTURE.read_text().split("CREATE OR REPLACE FUNCTION compute_partition_key()")[1]
    definition = "CREATE OR REPLACE FUNCTION compute_partition_key()" + definition.split("CREATE TRIGGER")[0]
    formula = trigger_formula(definition, "partition_key", COLUMNS)
    assert formula is not None
    assert formula.normalised == COMPOSITE and formula.overflows


def test_db003_trigger_and_variables() -> None:
    """The DB-003 shape, a quoted target, an assignment through a variable, and ELSIF arms."""
    db003 = (
        "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN NEW.partition_key := abs(hashtext(NEW.collection_id::text))"
        " % 100; RETURN NEW; END $$ LANGUAGE plpgsql"
    )
    assert trigger_formula(db003, "partition_key") == Formula(Column("collection_id"), 100, overflows=True)
    via_variable = (
        "CREATE FUNCTION f() RETURNS trigger AS $$ DECLARE k int; BEGIN k = abs(hashtext(NEW.id::text) % 8); "
        'NEW."partition_key" := k; RETURN NEW; END $$ LANGUAGE plpgsql'
    )
    assert trigger_formula(via_variable, "partition_key") == Formula(Column("id"), 8)
    elsif = (
        "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN IF NEW.a IS NULL THEN "
        "NEW.partition_key := abs(hashtext('x') % 10); ELSIF NEW.b IS NOT NULL THEN "
        "NEW.partition_key := abs(hashtext(NEW.b) % 10); ELSE NEW.partition_key := abs(hashtext(NEW.a) % 10); "
        "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
    )
    formula = trigger_formula(elsif, "partition_key")
    assert formula is not None
    assert formula.normalised == "abs(hashtext(CASE WHEN a IS NULL THEN 'x' ELSE COALESCE(b, a) END) % 10)"
    other_column = (
        "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN NEW.other := abs(hashtext(NEW.a) % 10); "
        "RETURN NEW; END $$ LANGUAGE plpgsql"
    )
    assert trigger_formula(other_column, "partition_key") is None


def test_helpers_in_plpgsql_and_sql() -> None:
    """get_partition_key() as the application has it, and SQL helpers with named and positional parameters."""
    helper = FIXTURE.read_text().split("CREATE OR REPLACE FUNCTION get_partition_key")[1]
    reading = read_plpgsql("CREATE OR REPLACE FUNCTION get_partition_key" + helper)
    assert [f.as_written for f in reading.formulas] == ["abs(hashtext(collection_id)) % 100"]
    assert reading.overflows == 1
    sql_reading = read_sql_function("SELECT abs(hashtext($1::text || ':' || $2) % 100)", ("c", "d"))
    assert [f.normalised for f in sql_reading.formulas] == ["abs(hashtext(c || ':' || d) % 100)"]
    assert sql_reading.overflows == 0


def test_overflow_counting() -> None:
    """Every abs() taken straight of hashtext(), through casts, anywhere in a statement."""
    assert count_overflows("SELECT abs(hashtext(a)) % 3, abs(hashtext(b) % 3), abs((hashtext(c))::int)") == 2
    assert count_overflows("not sql at all") == 0


def test_evaluation_follows_sql_null_rules() -> None:
    """|| is NULL on a NULL part; COALESCE takes the first non-NULL; a NULL source gives a NULL key."""
    formula = parse_expression(COMPOSITE)
    assert formula.source_text({"collection_id": "c", "document_id": None, "chunk_index": "3", "id": "9"}) == "c:3"
    assert formula.source_text({"collection_id": None, "document_id": "d", "chunk_index": "3", "id": "9"}) is None
    assert formula.key({"collection_id": None, "document_id": "d", "chunk_index": "3", "id": "9"}) is None

"""`partkey-exporter key`: one row's partition key in Python, by the table's formula and its columns' types."""

from __future__ import annotations

import argparse
from dataclasses import replace

import psycopg
from pydantic import ValidationError

from exporter.config import command_line_table
from exporter.formula import Formula
from exporter.formula_catalog import resolve_spec, table_formulas
from exporter.hashtext import text_form

_TYPES_SQL = """
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND a.attnum > 0 AND NOT a.attisdropped
"""


class KeyInputError(ValueError):
    """What the user gave cannot give a key; the message says what to change."""


def _pairs(items: list[str], option: str) -> dict[str, str]:
    """COLUMN=VALUE options as a dictionary."""
    pairs: dict[str, str] = {}
    for item in items:
        column, equals, value = item.partition("=")
        if not equals or not column:
            raise KeyInputError(f"{option} {item!r}: expected COLUMN=VALUE")
        pairs[column] = value
    return pairs


def _formula_and_types(args: argparse.Namespace) -> tuple[Formula, bool, dict[str, str]]:
    """The formula (and whether the table's own spelling overflows) and each column's type."""
    try:
        table = command_line_table(args)
    except ValidationError as error:
        raise KeyInputError("; ".join(e["msg"] for e in error.errors())) from None
    spec = table.spec
    if not args.dsn:
        formula = spec.key_formula
        return formula, formula.overflows, {}
    try:
        with psycopg.connect(args.dsn, autocommit=True, connect_timeout=10) as conn:
            spec = resolve_spec(conn, spec)
            overflows = spec.formula == "legacy"
            if table.key_expression == "auto":
                found = table_formulas(conn, spec)
                overflows = bool(found and found.table_formula and found.table_formula.overflows)
            rows = conn.execute(_TYPES_SQL, {"schema": spec.schema, "table": spec.table}).fetchall()
    except psycopg.Error as error:
        raise KeyInputError(f"cannot read the table's formula: {str(error).strip().splitlines()[0]}") from None
    except ValueError as error:
        raise KeyInputError(str(error)) from None
    if not rows:
        raise KeyInputError(f"table {spec.label} does not exist")
    return spec.key_formula, overflows, {name: type_name for name, type_name in rows}


def compute_key(args: argparse.Namespace) -> str:
    """The key as the server computes it, or 'NULL' when the formula's source is NULL."""
    formula, overflows, catalog_types = _formula_and_types(args)
    formula = replace(formula, overflows=overflows)
    values: dict[str, str | None] = dict(_pairs(args.value, "--value"))
    if args.collection_id is not None:
        values[formula.columns[0] if len(formula.columns) == 1 else args.source_column] = args.collection_id
    for column in args.null:
        values[column] = None
    types = dict(catalog_types)
    for item in args.type:
        column, equals, type_name = item.rpartition("=")
        types[column if equals else (formula.columns[0] if len(formula.columns) == 1 else args.source_column)] = (
            type_name
        )
    missing = [c for c in formula.columns if c not in values]
    if missing:
        needed = ", ".join(formula.columns)
        raise KeyInputError(f"no value for {', '.join(missing)}: the key is {formula.normalised} (uses {needed})")
    unused = [c for c in values if c not in formula.columns]
    if unused:
        raise KeyInputError(f"{', '.join(unused)} not in the key formula {formula.normalised}")
    texts: dict[str, str | None] = {}
    for column, value in values.items():
        try:
            texts[column] = None if value is None else text_form(value, types.get(column, "text"))
        except ValueError:
            raise KeyInputError(f"{column}={value!r} is not a valid {types.get(column)}") from None
    try:
        key = formula.key(texts, safe=False)
    except OverflowError as error:
        raise KeyInputError(
            f"{error} (the legacy formula overflows for this id; the safe one gives {formula.key(texts)})"
        ) from None
    return "NULL" if key is None else str(key)

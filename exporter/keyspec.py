"""The table a user watches and the SQL formula its partition key must follow (shared with migrations)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from psycopg import sql

from exporter.formula import Case, Coalesce, Column, Concat, Formula, Source, Text, columns_of

KeyFormula = Literal["safe", "legacy"]


@dataclass(frozen=True)
class KeySpec:
    """One watched table: where the key lives, what it is computed from, and how."""

    table: str = "chunks"
    schema: str = "public"
    key_column: str = "partition_key"
    source_column: str = "collection_id"
    modulus: int = 100
    formula: KeyFormula = "safe"
    # The source of hashtext() when it is more than one column (composite, COALESCE...); None: source_column.
    source: Source | None = None
    # key_expression: auto: read the table's own formula from the catalog before each use (formula_catalog).
    auto: bool = False

    @property
    def label(self) -> str:
        """The table's name as it appears in metric labels and reports."""
        return f"{self.schema}.{self.table}"

    @property
    def source_columns(self) -> tuple[str, ...]:
        """The columns the key is computed from, in order of first use (several for a composite key)."""
        return columns_of(self.source) if self.source is not None else (self.source_column,)

    @property
    def key_formula(self) -> Formula:
        """The normalised formula this spec checks and writes."""
        source = self.source if self.source is not None else Column(self.source_column)
        return Formula(source, self.modulus, overflows=self.formula == "legacy")

    def with_formula(self, formula: Formula) -> KeySpec:
        """This spec keyed by another formula (e.g. the one read from the table), in its safe form."""
        single = isinstance(formula.source, Column)
        return replace(
            self,
            source=None if single else formula.source,
            source_column=formula.source.name if isinstance(formula.source, Column) else formula.columns[0],
            modulus=formula.modulus,
        )

    @property
    def table_ident(self) -> sql.Identifier:
        """The quoted, schema-qualified table name."""
        return sql.Identifier(self.schema, self.table)

    def expression(
        self, formula: KeyFormula | None = None, row: str | None = None, *, placeholders: bool = False
    ) -> sql.Composed:
        """The key expression over the source, safe from INT_MIN overflow unless legacy; row="NEW" in triggers.

        It holds the modulo operator `%`: pass placeholders=True when the statement is executed with parameters.
        """
        if self.source is None or isinstance(self.source, Column):
            column = self.source.name if isinstance(self.source, Column) else self.source_column
            source: sql.Composable = _column(column, row)
        else:
            source = sql.SQL("({})").format(source_sql(self.source, row))
        return key_expression(source, self.modulus, formula or self.formula, placeholders=placeholders)


def _column(name: str, row: str | None) -> sql.Composable:
    """A column, or NEW.column inside a trigger."""
    if row is None:
        return sql.Identifier(name)
    return sql.SQL("{}.{}").format(sql.SQL(row), sql.Identifier(name))


def source_sql(source: Source, row: str | None = None) -> sql.Composable:
    """A normalised source rebuilt as SQL from its tree: every column quoted and cast to text, literals quoted."""
    if isinstance(source, Column):
        return sql.SQL("{}::text").format(_column(source.name, row))
    if isinstance(source, Text):
        return sql.SQL("{}::text").format(sql.Literal(source.value))
    if isinstance(source, Concat):
        return sql.SQL(" || ").join(source_sql(part, row) for part in source.parts)
    if isinstance(source, Coalesce):
        return sql.SQL("COALESCE({})").format(sql.SQL(", ").join(source_sql(arg, row) for arg in source.args))
    assert isinstance(source, Case)
    whens = [
        sql.SQL("WHEN {} IS {}NULL THEN {}").format(
            _column(condition.column, row), sql.SQL("NOT " if condition.negated else ""), source_sql(result, row)
        )
        for condition, result in source.whens
    ]
    default = sql.SQL(" ELSE {}").format(source_sql(source.default, row)) if source.default is not None else sql.SQL("")
    return sql.SQL("(CASE {}{} END)").format(sql.SQL(" ").join(whens), default)


def key_expression(
    source: sql.Composable, modulus: int, formula: KeyFormula = "safe", *, placeholders: bool = False
) -> sql.Composed:
    """abs(hashtext(src::text) % n), or the legacy abs(hashtext(src::text)) % n that overflows on INT_MIN.

    psycopg reads every `%` of a statement executed with parameters as a placeholder, and sends a statement
    without parameters as it is: placeholders=True spells the operator `%%` for the first case.
    """
    if modulus < 1:
        raise ValueError(f"modulus must be a positive integer, got {modulus}")
    operator = sql.SQL("%%" if placeholders else "%")
    if formula == "legacy":
        return sql.SQL("(abs(hashtext({}::text)) {} {})").format(source, operator, sql.Literal(modulus))
    return sql.SQL("abs(hashtext({}::text) {} {})").format(source, operator, sql.Literal(modulus))

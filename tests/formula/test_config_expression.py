"""key_expression in the configuration: auto by default, expressions rebuilt from the parse tree."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.config import ConfigError, TableConfig, parse_config
from exporter.formula_catalog import resolve_spec
from tests.formula.semantik import create_semantik


def test_default_is_auto() -> None:
    """A table without key_expression reads its formula from the catalog."""
    spec = TableConfig().spec
    assert spec.auto and spec.formula == "safe" and spec.source is None


def test_expression_is_rebuilt_with_quoted_identifiers(conn: psycopg.Connection[Any]) -> None:
    """The user's spelling never reaches the server: the safe form is rebuilt from the tree, names quoted."""
    table = TableConfig(key_expression="ABS(HashText(Collection_Id::varchar || ':' || document_id)) % 16")
    spec = table.spec
    assert not spec.auto and spec.modulus == 16
    assert spec.source_columns == ("collection_id", "document_id")
    assert spec.expression().as_string(conn) == (
        'abs(hashtext(("collection_id"::text || \':\'::text || "document_id"::text)::text) % 16)'
    )
    assert spec.expression(row="NEW").as_string(conn) == (
        'abs(hashtext((NEW."collection_id"::text || \':\'::text || NEW."document_id"::text)::text) % 16)'
    )


def test_expression_over_a_missing_column_is_refused_on_use(conn: psycopg.Connection[Any]) -> None:
    """Columns can only be checked against the table once connected: the error names the column."""
    create_semantik(conn, partitions=1)
    spec = TableConfig(key_expression="abs(hashtext(tenant_id::text) % 100)").spec
    with pytest.raises(ValueError, match=r"public\.chunks has no column tenant_id"):
        resolve_spec(conn, spec)


def test_refusal_names_file_and_line() -> None:
    """A hostile expression stops config load with source:line and the reason."""
    text = (
        "targets:\n  - name: db\n    dsn: postgresql://h/db\n    tables:\n"
        "      - key_expression: 'abs(hashtext((SELECT 1)::text)) % 100'\n"
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "etc/partkey.yaml")
    assert refused.value.problems == [
        "etc/partkey.yaml:5: targets[0].tables[0].key_expression: Value error, "
        "key_expression is not a partition-key formula: a subquery"
    ]

"""partkey-exporter's options work before or after the subcommand (issue 14, failure 6)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from exporter.cli import main
from tests.schema import create_list_table, insert_rows


@pytest.mark.parametrize(
    "argv",
    [
        ["--dsn", "{dsn}", "--modulus", "10", "verify"],
        ["verify", "--dsn", "{dsn}", "--modulus", "10", "--log-level", "info"],
        ["--log-level", "info", "--modulus=10", "verify", "--dsn", "{dsn}"],
    ],
)
def test_options_before_or_after_the_subcommand(
    conn: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    create_list_table(conn, modulus=10, trigger=None)
    insert_rows(conn, 100, modulus=10)
    assert main([a.format(dsn=dsn) for a in argv]) == 0
    assert "100 rows checked (full), 0 wrong keys" in capsys.readouterr().out

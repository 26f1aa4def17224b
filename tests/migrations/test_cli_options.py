"""partkey-migrate's common options work before or after the subcommand (issue 14, failure 6)."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import psycopg
import pytest

from migrations.cli import main
from tests.schema import create_list_table, insert_rows


@pytest.mark.parametrize(
    "order",
    [
        ["--dsn", "{dsn}", "status", "--json", "--table", "public.chunks"],
        ["--dsn", "{dsn}", "--json", "--table", "public.chunks", "status"],
        ["--json", "status", "--dsn={dsn}", "--table", "public.chunks"],
        ["-q", "--table", "public.chunks", "status", "--dsn", "{dsn}", "--json"],
    ],
)
def test_common_options_before_or_after_the_subcommand(
    conn: psycopg.Connection[Any], dsn: str, order: list[str]
) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 100, modulus=10)
    argv = [a.format(dsn=dsn) for a in order]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--modulus", "10"])
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue())
    assert report["table"] == "public.chunks"
    assert report["migration_state"] == "not started"


def test_an_option_the_subcommand_does_not_know_is_still_an_error(dsn: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--batch-size", "5", "status", "--dsn", dsn])
    assert code == 2
    assert "partkey-migrate: error: unrecognized arguments: --batch-size 5" in err.getvalue()
    assert err.getvalue().startswith("usage: partkey-migrate")

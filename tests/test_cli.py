"""The one-shot commands: exit codes and what the user reads."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import psycopg
import pytest

from exporter.cli import main
from tests.schema import INT_MIN_COLLECTION_ID, create_list_table, insert_rows


def test_verify_exit_codes(conn: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    create_list_table(conn, modulus=10, trigger=None)
    insert_rows(conn, 300, modulus=10)
    assert main(["verify", "--dsn", dsn, "--modulus", "10"]) == 0
    out = capsys.readouterr().out
    assert "default/public.chunks: 300 rows checked (full), 0 wrong keys, 0 NULL keys, 0 expression errors" in out
    conn.execute("UPDATE chunks SET partition_key = (partition_key + 3) % 10 WHERE id = 42")
    assert main(["verify", "--dsn", dsn, "--modulus", "10"]) == 1
    out = capsys.readouterr().out
    assert "1 wrong keys" in out and "mismatch: public.chunks_part_" in out and "id=42" in out


def test_verify_unreachable_is_exit_2_without_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--dsn", "postgresql://u:hidden-pw@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert "default/public.chunks: ERROR: target default is down" in err
    assert "hidden-pw" not in err


def test_verify_missing_table_is_exit_2(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--dsn", dsn, "--table", "nope"]) == 2
    assert "table public.nope does not exist" in capsys.readouterr().err


def test_report_text(conn: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 1000, modulus=10)
    conn.execute("ANALYZE chunks")
    assert main(["report", "--dsn", dsn, "--modulus", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    major = conn.info.server_version // 10000
    for expected in [
        f"  PostgreSQL Version: {major}",
        "  Current Method: TRIGGER",
        "  Is Optimal: NO",
        "  Records Checked: 1,000",
        "  Correct Keys: 1,000",
        "  Validation: PASSED",
        "  Total Chunks: 1,000",
        "  INT_MIN Overflow in Formula: YES",
    ]:
        assert expected in lines


def test_key_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["key", INT_MIN_COLLECTION_ID]) == 0
    assert capsys.readouterr().out.strip() == "48"
    # uuid columns: any spelling (read from the catalog with --dsn, or --type uuid); text is hashed as stored.
    assert main(["key", INT_MIN_COLLECTION_ID.upper().replace("-", ""), "--type", "uuid"]) == 0
    assert capsys.readouterr().out.strip() == "48"
    assert main(["key", INT_MIN_COLLECTION_ID.upper().replace("-", "")]) == 0
    assert capsys.readouterr().out.strip() != "48"
    assert main(["key", INT_MIN_COLLECTION_ID, "--key-expression", "legacy"]) == 2
    assert "the safe one gives 48" in capsys.readouterr().err


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    # One real process for the entry point; the subcommands in-process (a process each took 2 s on a loaded machine).
    done = subprocess.run([sys.executable, "-m", "exporter.cli", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "usage: partkey-exporter" in done.stdout
    for command in (["run"], ["report"], ["verify"], ["check-config"], ["demo"], ["key"]):
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0
        assert f"usage: partkey-exporter {command[0]}" in capsys.readouterr().out

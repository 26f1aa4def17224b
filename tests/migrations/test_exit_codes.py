"""Exit codes (one table, one test per code), --json on success and failure, database errors in full."""

from __future__ import annotations

import json
import os
from typing import Any

import psycopg
import pytest

from migrations.errors import ExitCode, exit_code_table
from tests.migrations.helpers import ROOT, catalog, cli, drift, legacy_trigger, state
from tests.schema import create_list_table, create_plain_table, insert_rows


@pytest.fixture
def list_table(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """10 partitions, 500 rows, the legacy trigger on the parent."""
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 500, modulus=10)
    return conn


def one_document(text: str) -> dict[str, Any]:
    """stdout holds exactly one JSON document (json.loads fails on anything before or after it)."""
    document = json.loads(text)
    assert isinstance(document, dict)
    return document


def test_the_docs_show_the_exit_codes_the_code_uses() -> None:
    with open(os.path.join(ROOT, "docs", "migrate.md"), encoding="utf-8") as page:
        assert exit_code_table() in page.read()
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4]


def test_exit_0_ok(list_table: psycopg.Connection[Any], dsn: str) -> None:
    run = cli(dsn, "upgrade", "--json")
    assert run.code == 0 == int(ExitCode.OK), run.err
    document = one_document(run.out)
    assert document["ok"] is True and document["exit_code"] == 0
    assert document["state"] == "upgraded"
    assert "upgrade finished: state upgraded" in document["output"]


def test_exit_1_wrong_keys_and_refusals(list_table: psycopg.Connection[Any], dsn: str) -> None:
    drift(list_table, 2)
    verify = cli(dsn, "verify", "--json")
    assert verify.code == 1 == int(ExitCode.REFUSED)
    assert one_document(verify.out)["mismatched"] == 2
    refused = cli(dsn, "upgrade", "--json")
    assert refused.code == 1
    error = one_document(refused.out)["error"]
    assert error["kind"] == "refused" and "2 row(s) of public.chunks have a wrong key" in error["message"]


def test_exit_2_usage(list_table: psycopg.Connection[Any], dsn: str) -> None:
    missing = cli(dsn, "status", "--json", "--table", "nope")
    assert missing.code == 2 == int(ExitCode.USAGE)
    error = one_document(missing.out)["error"]
    assert error == {
        "kind": "usage",
        "message": "error: table public.nope does not exist in database " + repr(list_table.info.dbname),
    }
    bad_argument = cli(dsn, "repair", "--json", "--batch-size", "0")
    assert bad_argument.code == 2
    assert "argument --batch-size: must be >= 1, got 0" in one_document(bad_argument.out)["error"]["message"]


def test_exit_3_database_error_shows_message_detail_hint_context_without_the_password(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    create_plain_table(conn, modulus=10)
    insert_rows(conn, 50, modulus=10)
    conn.execute("UPDATE chunks SET partition_key = partition_key + 1 WHERE id <= 3")
    conn.execute(
        """CREATE FUNCTION frozen() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'chunk % is frozen, password=hunter2secret', OLD.id
                 USING DETAIL = 'frozen chunks cannot change', HINT = 'unfreeze it first'; END $$"""
    )
    conn.execute("CREATE TRIGGER frozen BEFORE UPDATE ON chunks FOR EACH ROW EXECUTE FUNCTION frozen()")
    secret_dsn = f"{dsn} password=hunter2secret"  # trust authentication: the password is sent, not checked

    run = cli(secret_dsn, "repair")
    assert run.code == 3 == int(ExitCode.DATABASE)
    assert "partkey-migrate: database error: chunk 1 is frozen, password=*** (SQLSTATE P0001)" in run.err
    assert "partkey-migrate:   DETAIL: frozen chunks cannot change" in run.err
    assert "partkey-migrate:   HINT: unfreeze it first" in run.err
    assert "partkey-migrate:   CONTEXT: PL/pgSQL function frozen() line 2 at RAISE" in run.err
    assert "hunter2secret" not in run.err + run.out

    as_json = cli(secret_dsn, "repair", "--json")
    assert as_json.code == 3
    error = one_document(as_json.out)["error"]
    assert error["kind"] == "database" and error["sqlstate"] == "P0001"
    assert error["message"] == "chunk 1 is frozen, password=***"
    assert error["detail"] == "frozen chunks cannot change" and error["hint"] == "unfreeze it first"
    assert error["context"] == "PL/pgSQL function frozen() line 2 at RAISE"
    assert "hunter2secret" not in as_json.out + as_json.err


def test_exit_4_no_lock_within_the_retries(list_table: psycopg.Connection[Any], dsn: str) -> None:
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT 1 FROM chunks LIMIT 1")  # ACCESS SHARE until the rollback
        run = cli(dsn, "upgrade", "--json", "--lock-timeout", "0.1", "--max-attempts", "2")
        blocker.rollback()
    assert run.code == 4 == int(ExitCode.LOCK_BUSY)
    error = one_document(run.out)["error"]
    assert error["kind"] == "lock-timeout"
    assert "no lock within 0.1s after 2 attempts" in error["message"]


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("plan",),
        ("plan", "--downgrade"),
        ("verify",),
        ("repair",),
        ("upgrade", "--dry-run"),
        ("upgrade",),
        ("downgrade", "--dry-run"),
        ("downgrade",),
    ],
)
def test_every_command_prints_one_json_document(
    list_table: psycopg.Connection[Any], dsn: str, args: tuple[str, ...]
) -> None:
    if args[0] == "downgrade" or args[:2] == ("plan", "--downgrade"):
        assert cli(dsn, "upgrade").code == 0
    run = cli(dsn, *args, "--json")
    assert run.code == 0, run.err
    one_document(run.out)


def test_repair_json_reports_what_it_fixed(list_table: psycopg.Connection[Any], dsn: str) -> None:
    drift(list_table, 3)
    run = cli(dsn, "repair", "--json")
    assert run.code == 0, run.err
    document = one_document(run.out)
    assert document["state"] == "clean" and document["message"] == "fixed 3 row(s)"
    assert "repair: fixed 3 row(s) in 10 batch(es)" in document["output"] or any(
        line.startswith("repair: fixed 3 row(s)") for line in document["output"]
    )


def run_lock_held(dsn: str) -> psycopg.Connection[Any]:
    """Another connection holding public.chunks' run lock, as a running partkey-migrate would."""
    holder = psycopg.connect(dsn, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s, hashtext('partkey-migrate:public.chunks'))", (0x706B,))
    return holder


@pytest.mark.versioned("partkey-migrate refusals")
@pytest.mark.parametrize("refusal", ["impossible strategy", "run in progress", "half-done downgrade"])
def test_upgrade_dry_run_exits_as_the_real_run_for_every_refusal(
    conn: psycopg.Connection[Any], dsn: str, refusal: str
) -> None:
    strategy: tuple[str, ...] = ()
    holder = None
    if refusal == "impossible strategy":
        create_plain_table(conn, modulus=10)
        insert_rows(conn, 100, modulus=10)
        strategy = ("--strategy", "check")
    else:
        create_list_table(conn, modulus=10, trigger=legacy_trigger(conn))
        insert_rows(conn, 100, modulus=10)
    if refusal == "half-done downgrade":
        assert cli(dsn, "upgrade").code == 0
        conn.execute("UPDATE partkey_migration_state SET direction = 'downgrade', status = 'downgrading'")
    before, recorded = catalog(conn), state(conn)
    if refusal == "run in progress":
        holder = run_lock_held(dsn)
    try:
        dry = cli(dsn, "upgrade", "--dry-run", *strategy)
        real = cli(dsn, "upgrade", *strategy)
    finally:
        if holder is not None:
            holder.close()
    assert dry.code == real.code == ExitCode.REFUSED, (dry.err, real.err)
    assert dry.err.splitlines()[-1] == real.err.splitlines()[-1]
    assert catalog(conn) == before
    assert state(conn) == recorded

"""Behind a real PgBouncer (issue 20): no prepared statements, no leaked session state, per-transaction limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from exporter import PartitionImplementationDetector
from exporter.app import Exporter
from exporter.target import APPLICATION_NAME
from migrations.connect import POOL_REFUSAL, direct
from migrations.runlock import LOCK_CLASS, held_here
from tests.integrations.common import load_example
from tests.migrations.helpers import catalog, cli, state
from tests.pgbouncer import assert_clean_run, pgbouncer, run_two_daemons_and_an_application, semantik_chunks
from tests.support import config_for, metrics, serving, value

MODULUS = 10
ALL_CHECKS = f"""modulus: {MODULUS}
monotonic_column: id
checks:
  distribution_exact: {{enabled: true}}
  insert_probe: {{enabled: true, samples: 2}}"""
fastapi_example = load_example("fastapi/partkey_fastapi.py")


@pytest.fixture
def chunks(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """A LIST-partitioned table with the trigger and some rows, as semantik has it."""
    return semantik_chunks(conn, MODULUS)


def test_two_daemons_and_an_application_share_a_transaction_pool(
    chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str, tmp_path: Path
) -> None:
    with pgbouncer(admin_dsn, "transaction") as bouncer:
        # 6 s: every 1 s check runs several times on both daemons; the 60 s soak (tests/reliability) is the long run.
        run = run_two_daemons_and_an_application(bouncer.dsn(dsn), tmp_path, 6, MODULUS)
        pool_log = bouncer.log()
    assert_clean_run(run)
    assert "unsupported startup parameter" not in pool_log


def test_behind_default_pgbouncer_checks_give_up_after_lock_timeout_and_cannot_write(
    chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str
) -> None:
    with pgbouncer(admin_dsn, "transaction") as bouncer:
        pooled = bouncer.dsn(dsn)
        exporter = Exporter(config_for(pooled, ALL_CHECKS, extra="", name="t1"))
        target = exporter.targets["t1"]
        target.lock_timeout = 0.2
        try:
            with psycopg.connect(dsn) as locker:
                locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
                results = {runner.check.name: runner.run() for runner in exporter.runners.values()}
                locker.rollback()
            with target.session() as session, session.transaction():
                target.begin_check(session, statement_timeout=5)
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    session.execute(
                        "INSERT INTO chunks (collection_id, partition_key) VALUES (%s, 1)",
                        ("00000000-0000-0000-0000-000000000001",),
                    )
            with target.session() as session:
                # application_name is a startup parameter PgBouncer passes on to the server connection it lends.
                row = session.execute("SELECT current_setting('application_name')").fetchone()
                assert row == (APPLICATION_NAME,)
        finally:
            exporter.stop()
        # The next client of the pool gets server connections with nothing of the exporter's left on them.
        with psycopg.connect(pooled, autocommit=True) as app:
            left = app.execute(
                "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'),"
                " current_setting('default_transaction_read_only'), current_setting('transaction_read_only'),"
                " (SELECT count(*) FROM pg_prepared_statements)"
            ).fetchone()
    assert left == ("0", "0", "off", "off", 0)
    blocked = {"verification_incremental", "verification_sample", "verification_full", "distribution_exact"}
    blocked |= {"insert_probe"}
    for name, result in results.items():
        if name in blocked:
            assert not result.success, name
            assert result.error is not None and result.error.startswith(
                "lock wait exceeded lock_timeout=0.2s: canceling statement due to lock timeout"
            ), (name, result.error)
        else:
            # Catalog and statistics reads do not wait on the table's lock.
            assert result.success or "(SQLSTATE 55P03)" in (result.error or ""), (name, result.error)
    assert blocked <= set(results)


def test_detector_and_fastapi_router_through_a_transaction_pool(
    chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str
) -> None:
    with pgbouncer(admin_dsn, "transaction") as bouncer:
        detector = PartitionImplementationDetector(
            bouncer.dsn(dsn), modulus=MODULUS, admin_token="tok", cache_seconds=0
        )
        with detector:
            for _ in range(6):  # past psycopg's default prepare threshold
                result = detector.verify_partition_keys("full")
            assert (result.rows_checked, result.mismatched) == (500, 0)
            assert detector.detect_implementation().method == "trigger"
            app = fastapi_example.create_app(detector)
            with TestClient(app) as client:
                for _ in range(6):
                    response = client.get("/admin/partition/health")
                    assert response.status_code == 200, response.text
                verify = client.post(
                    "/admin/partition/verify", content=b'{"mode": "full"}', headers={"Authorization": "Bearer tok"}
                )
        assert verify.status_code == 200, verify.text
        table = response.json()["tables"][0]
        assert table["verification"]["rows_checked"] == 500
        assert table["distribution"]["total_rows"] == 500
        assert "unsupported startup parameter" not in bouncer.log()


def test_the_daemon_through_a_statement_pool_says_why_each_check_fails_and_stays_up(
    chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str
) -> None:
    with pgbouncer(admin_dsn, "statement") as bouncer:
        exporter = Exporter(config_for(bouncer.dsn(dsn), ALL_CHECKS, name="t1"))
        try:
            first = {runner.check.name: runner.run() for runner in exporter.runners.values()}
            with serving(exporter) as server:
                samples = metrics(server.url)
        finally:
            exporter.stop()
    hint = "PgBouncer's pool_mode=statement cannot run a transaction of several statements"
    for name, result in first.items():
        assert not result.success, name
        assert result.error is not None and "transaction blocks not allowed in statement pooling mode" in result.error
        assert hint in result.error, (name, result.error)
    for name in first:
        assert value(samples, "partkey_check_success", target="t1", table="public.chunks", check=name) == 0
    assert value(samples, "partkey_up", target="t1") == 0


def test_migrate_refuses_a_transaction_pool_before_reading_and_changes_nothing(
    chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str
) -> None:
    before = catalog(chunks)
    with pgbouncer(admin_dsn, "transaction") as bouncer:
        pooled = bouncer.dsn(dsn)
        refused = {command: cli(pooled, command, modulus=MODULUS) for command in ("upgrade", "downgrade", "repair")}
        status = cli(pooled, "status", modulus=MODULUS)
        plan = cli(pooled, "plan", modulus=MODULUS)
        verify = cli(pooled, "verify", modulus=MODULUS)
        # The next client of the pool finds no session setting of partkey-migrate's on its server connection.
        with psycopg.connect(pooled, autocommit=True) as app:
            left = app.execute(
                "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
            ).fetchone()
    for command, run in refused.items():
        assert run.code == 2, (command, run)
        assert run.err == f"partkey-migrate: error: {POOL_REFUSAL}\n", (command, run.err)
        assert run.out == ""
    assert catalog(chunks) == before
    assert state(chunks) is None
    assert chunks.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
    assert status.code == 0, status.err
    assert "trigger" in status.out
    assert plan.code == 0, plan.err
    assert verify.code == 0, verify.err
    assert "wrong keys: 0" in verify.out
    assert left == ("0", "0")


def test_migrate_upgrades_through_a_session_pool(chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str) -> None:
    with pgbouncer(admin_dsn, "session") as bouncer:
        run = cli(bouncer.dsn(dsn), "upgrade", modulus=MODULUS)
    assert run.code == 0, run.err
    after = catalog(chunks)
    assert after["triggers"] == []
    assert state(chunks) is not None


def test_the_run_lock_check_sees_the_lock_vanish_behind_a_transaction_pool(admin_dsn: str, dsn: str) -> None:
    key = "partkey-migrate:public.chunks"
    with pgbouncer(admin_dsn, "transaction") as bouncer:
        pooled = bouncer.dsn(dsn)
        with psycopg.connect(pooled, autocommit=True) as run, psycopg.connect(pooled) as other:
            taken = run.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, key)).fetchone()
            assert taken == (True,)
            assert held_here(run, key)  # the pool lent the same server connection again
            # Another client now holds that server connection, inside its transaction: run gets another one.
            other.execute("SELECT 1")
            assert not held_here(run, key)
            other.rollback()


def test_migrate_refuses_a_statement_pool_and_changes_nothing(
    chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str
) -> None:
    before = catalog(chunks)
    with pgbouncer(admin_dsn, "statement") as bouncer:
        run = cli(bouncer.dsn(dsn), "upgrade", modulus=MODULUS)
    assert (run.code, run.err) == (2, f"partkey-migrate: error: {POOL_REFUSAL}\n")
    assert catalog(chunks) == before


def test_a_dsn_with_options_behind_default_pgbouncer_says_what_to_do(
    chunks: psycopg.Connection[Any], admin_dsn: str, dsn: str
) -> None:
    with pgbouncer(admin_dsn, "transaction") as bouncer:
        exporter = Exporter(config_for(bouncer.dsn(dsn) + " options='-c work_mem=64MB'", "modulus: 10", name="t1"))
        try:
            result = exporter.runners[("t1", "public.chunks", "implementation")].run()
        finally:
            exporter.stop()
    assert not result.success
    assert result.error is not None
    assert "unsupported startup parameter: options" in result.error
    assert "remove it (or list it in ignore_startup_parameters)" in result.error


def test_only_a_direct_connection_skips_the_pool_probe(admin_dsn: str, dsn: str) -> None:
    """PostgreSQL's own BackendKeyData names the session's backend; PgBouncer's, in every pool mode, does not."""

    def answered_directly(target: str) -> bool:
        with psycopg.connect(target, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            return direct(conn, int(row[0]))

    assert answered_directly(dsn)
    for mode in ("session", "transaction", "statement"):
        with pgbouncer(admin_dsn, mode) as bouncer:
            assert not answered_directly(bouncer.dsn(dsn)), mode

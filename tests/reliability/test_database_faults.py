"""Database faults a check meets alone: a statement timeout, an unreachable target, a missing privilege.

A lock under a scrape is in test_slow.py and a killed backend in test_restart.py (each was tested twice before).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.target import APPLICATION_NAME
from tests.schema import create_list_table, insert_rows
from tests.support import config_for, http, metrics, serving, value

T = {"target": "t1", "table": "public.chunks"}


def _our_active_queries(admin: psycopg.Connection[Any]) -> list[str]:
    """Queries of the exporter's connection that are still running."""
    return [
        r[0]
        for r in admin.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = %s AND state = 'active'", (APPLICATION_NAME,)
        ).fetchall()
    ]


def test_statement_timeout_leaves_no_query_running(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=4, trigger=None)
    insert_rows(conn, 100, modulus=4)
    config = config_for(dsn, "modulus: 4\nchecks:\n  verification_full: {statement_timeout: 300ms}")
    config = config.model_copy(update={"targets": [config.targets[0].model_copy(update={"lock_timeout": 30.0})]})
    exporter = Exporter(config)
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
        result = exporter.runners[("t1", "public.chunks", "verification_full")].run()
        assert not result.success
        assert result.error is not None and "statement_timeout=0.3s" in result.error and "57014" in result.error
        assert _our_active_queries(conn) == []
    assert exporter.targets["t1"].up is True  # a timeout is not an outage
    exporter.stop()


def test_unreachable_target_gives_up_zero_and_hides_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-Pa55"
    exporter = Exporter(config_for(f"postgresql://watcher:{secret}@127.0.0.1:1/app", "modulus: 4"))
    exporter.run_all_once()
    with serving(exporter) as server:
        samples = metrics(server.url)
        _, _, report = http(server.url + "/report")
        _, _, health = http(server.url + "/admin/partition/health")
        status, _, _ = http(server.url + "/readyz")
    assert value(samples, "partkey_up", target="t1") == 0
    assert value(samples, "partkey_check_success", **T, check="implementation") == 0
    assert status == 503
    assert b"Target Reachable: NO" in report
    assert b'"status": "unhealthy"' in health
    everything = caplog.text + report.decode() + health.decode() + repr(samples)
    assert secret not in everything
    assert "target t1 is down" in caplog.text
    # Logged once on the change of state, not once per failing attempt.
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("target t1 is down" in line for line in loud) == 1, loud


def test_missing_privilege_fails_one_check_and_names_it(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=4, trigger=None)
    insert_rows(conn, 50, modulus=4)
    conn.execute("DROP ROLE IF EXISTS partkey_noselect")
    conn.execute("CREATE ROLE partkey_noselect LOGIN PASSWORD 'pw' IN ROLE pg_monitor")
    try:
        info = conn.info
        weak = f"host={info.host} port={info.port} dbname={info.dbname} user=partkey_noselect password=pw"
        exporter = Exporter(config_for(weak, "modulus: 4"))
        exporter.run_all_once()
        full = exporter.store.latest("t1", "public.chunks", "verification_full")
        implementation = exporter.store.latest("t1", "public.chunks", "implementation")
        estimate = exporter.store.latest("t1", "public.chunks", "distribution")
        assert full is not None and not full.success
        assert full.error is not None and full.error.startswith("missing privilege: permission denied")
        assert implementation is not None and implementation.success
        assert estimate is not None and estimate.success
        exporter.stop()
    finally:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'partkey_noselect'")
        conn.execute("DROP OWNED BY partkey_noselect")
        conn.execute("DROP ROLE partkey_noselect")

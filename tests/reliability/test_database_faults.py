"""Database faults a check meets alone: a statement timeout, an unreachable target.

A lock under a scrape is in test_slow.py, a killed backend in test_restart.py, a missing privilege and a password
that must never show in test_secrets_privilege.py (each was tested twice before).
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
    """Queries of the exporter's connection to this database that are still running (not another worker's)."""
    return [
        r[0]
        for r in admin.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = %s AND datname = current_database() "
            "AND state = 'active'",
            (APPLICATION_NAME,),
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


def test_unreachable_target_gives_up_zero_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    exporter = Exporter(config_for("postgresql://watcher@127.0.0.1:1/app", "modulus: 4"))
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
    assert "target t1 is down" in caplog.text
    # Logged once on the change of state, not once per failing attempt.
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert sum("target t1 is down" in line for line in loud) == 1, loud

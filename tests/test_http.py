"""HTTP endpoints on a real table: readiness after a check, the health report, verification and its one-at-a-time lock.

Bad input, routes and methods need no database: tests/test_offline.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from exporter.app import Exporter
from exporter.http import ExporterHTTPServer
from tests.schema import create_list_table, insert_rows
from tests.support import assert_unhealthy_report, config_for, held_elsewhere, http, serving

TOKEN = "tok-123456"


@pytest.fixture
def server(conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ExporterHTTPServer]:
    """An exporter on a small LIST table with two wrong keys, behind a bearer token."""
    monkeypatch.setenv("PARTKEY_TEST_TOKEN", TOKEN)
    create_list_table(conn, modulus=5, trigger=None)
    insert_rows(conn, 500, modulus=5)
    conn.execute("UPDATE chunks SET partition_key = (partition_key + 1) % 5 WHERE id IN (10, 20)")
    exporter = Exporter(config_for(dsn, "modulus: 5", extra="admin_token_env: PARTKEY_TEST_TOKEN"))
    with serving(exporter) as running:
        yield running


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def test_readyz_turns_ready_after_one_real_check(server: ExporterHTTPServer) -> None:
    """/healthz and /readyz's answers before any check are tested database-free (test_offline)."""
    assert http(server.url + "/readyz")[0] == 503
    server.exporter.runners[("t1", "public.chunks", "implementation")].run()
    status, _, body = http(server.url + "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "targets": {"t1": True}}


def test_health_report_and_json(server: ExporterHTTPServer) -> None:
    server.exporter.run_all_once()
    assert_unhealthy_report(server.url, method="none", mismatched=2, checked=500, chunks=500)


def test_verify_with_the_token_runs_a_full_pass(server: ExporterHTTPServer) -> None:
    """The refusals without the token are tested database-free (test_offline)."""
    url = server.url + "/admin/partition/verify"
    status, _, body = http(url, "POST", b'{"mode": "full"}', _auth())
    result = json.loads(body)
    assert status == 200 and result["verification"]["mismatched"] == 2 and result["verification"]["rows_checked"] == 500


def test_second_verification_of_a_table_gets_409(server: ExporterHTTPServer) -> None:
    with held_elsewhere(server.exporter.verify_states[("t1", "public.chunks")].lock):
        status, _, body = http(server.url + "/admin/partition/verify", "POST", b"{}", _auth())
    assert status == 409
    assert json.loads(body) == {"error": "a verification of public.chunks on t1 is already running"}
    assert http(server.url + "/admin/partition/verify", "POST", b"{}", _auth())[0] == 200

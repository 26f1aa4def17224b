"""The harness's session finders: an exporter's sessions are told apart by database, not by name alone."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.reliability.harness import database_of, our_backends


def test_our_backends_are_the_exporter_sessions_of_one_database(
    conn: psycopg.Connection[Any], dsn: str, admin_dsn: str
) -> None:
    """A session with the exporter's name in another database (another xdist worker's test) is not ours."""
    assert database_of(dsn) != database_of(admin_dsn)
    with (
        psycopg.connect(dsn, application_name="partkey-exporter") as here,
        psycopg.connect(admin_dsn, application_name="partkey-exporter") as elsewhere,
    ):
        mine, theirs = here.info.backend_pid, elsewhere.info.backend_pid
        assert [pid for pid, _, _ in our_backends(conn)] == [mine]
        with psycopg.connect(admin_dsn) as admin:
            assert [pid for pid, _, _ in our_backends(admin, database=database_of(dsn))] == [mine]
            assert [pid for pid, _, _ in our_backends(admin)] == [theirs]

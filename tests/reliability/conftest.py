"""Reliability tests: a private server that may restart (slow ones run with PARTKEY_SLOW=1, see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.reliability.harness import PrivateServer
from tests.schema import create_list_table, insert_rows


@pytest.fixture(scope="session")
def own_server() -> Iterator[PrivateServer]:
    """A PostgreSQL of our own that tests may stop, start, restart and reconfigure; never the shared one."""
    server = PrivateServer()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_dsn(own_server: PrivateServer) -> Iterator[str]:
    """A fresh database on the private server; the server is running when the test starts and ends."""
    own_server.ensure_running()
    with own_server.database() as url:
        yield url
        own_server.ensure_running()


@pytest.fixture
def table(own_dsn: str) -> str:
    """The private server's database with chunks: 4 LIST partitions, no trigger, 400 rows, analyzed."""
    with psycopg.connect(own_dsn, autocommit=True) as conn:
        create_list_table(conn, modulus=4, trigger=None)
        insert_rows(conn, 400, modulus=4)
        conn.execute("ANALYZE chunks")
    return own_dsn

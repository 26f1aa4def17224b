"""Reliability tests: a private server that may restart (slow ones run with PARTKEY_SLOW=1, see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.harness import PrivateServer


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

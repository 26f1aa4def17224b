"""Reliability tests: slow ones only with PARTKEY_SLOW=1 (make test-reliability); a private server that may restart."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.reliability.harness import PrivateServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked slow unless PARTKEY_SLOW=1, so `make test` stays fast."""
    if os.environ.get("PARTKEY_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: runs in make test-reliability (PARTKEY_SLOW=1)")
    here = os.path.dirname(__file__)
    for item in items:
        # Hooks in a conftest see the whole session's items: touch only this directory's.
        if "slow" in item.keywords and str(item.path).startswith(here):
            item.add_marker(skip)


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

"""Shared fixtures: one real PostgreSQL per session (per xdist worker), a fresh database per test.

`make test` runs the suite on 4 xdist workers (`make unit WORKERS=n`); each starts its own server, so tests never
share one. Tests that use no database fixture are marked `nodb` automatically (`make test-nodb` runs them without any
server). Tests marked `slow` run only with PARTKEY_SLOW=1 (`make test-reliability`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, suppress
from typing import Any, TypeVar

import psycopg
import pytest

from tests.pgserver import create_database, drop_database, postgres_server, scratch_database, with_database

T = TypeVar("T")
Clone = Callable[[str, Callable[[str], T]], tuple[str, T]]

_counter = itertools.count()
# Fixtures that reach a server (the session's, a private one, an old version's): a test with none needs no database.
_DATABASE_FIXTURES = {"admin_dsn", "own_server", "old", "binaries"}
# Tests that start a PostgreSQL of their own in a subprocess.
_OWN_SERVER = ("tests/test_demo.py::", "tests/test_standby.py::")


def _unique(prefix: str) -> str:
    """A database name no other test, worker or session on this server uses."""
    return f"{prefix}{os.getpid()}_{next(_counter)}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip tests marked slow unless PARTKEY_SLOW=1 (make test-reliability); mark the database-free ones `nodb`."""
    slow = os.environ.get("PARTKEY_SLOW") == "1"
    skip = pytest.mark.skip(reason="slow: runs in make test-reliability (PARTKEY_SLOW=1)")
    for item in items:
        if "slow" in item.keywords and not slow:
            item.add_marker(skip)
        if item.nodeid.startswith(_OWN_SERVER):
            continue
        if not _DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.nodb)


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """DSN of a superuser on the session's server."""
    if os.environ.get("PARTKEY_NODB") == "1":  # make test-nodb: no server may start
        pytest.fail("make test-nodb runs only tests without a database fixture, and this one asked for a server")
    with postgres_server() as dsn:
        yield dsn


class Spares:
    """Empty databases made one ahead, in a thread, while a test runs: CREATE DATABASE costs 0.2-0.9 s a test.

    The tests mostly wait (on PostgreSQL, subprocesses, polls), so the next test's database is ready when it starts.
    Each database is still used by one test only and dropped after it.
    """

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spare-database")
        self.next: Future[str] | None = None

    def _create(self) -> str:
        name = _unique("partkey_t")
        create_database(self.admin_dsn, name)
        return name

    def take(self) -> str:
        """The name of a fresh, empty database, which the caller drops; the next one starts being made now."""
        ready = self.next if self.next is not None else self.maker.submit(self._create)
        self.next = None
        name = ready.result()  # a failed CREATE DATABASE fails the test that asked for it, with the server's error
        self.next = self.maker.submit(self._create)
        return name

    def close(self) -> None:
        """Drop the database made for a test that never came."""
        if self.next is not None:
            with suppress(psycopg.Error):  # its making failed, or the server went first: nothing left to drop
                drop_database(self.admin_dsn, self.next.result())
        self.maker.shutdown()


@pytest.fixture(scope="session")
def spares(admin_dsn: str) -> Iterator[Spares]:
    """The session's maker of databases ahead of need."""
    maker = Spares(admin_dsn)
    try:
        yield maker
    finally:
        maker.close()


@pytest.fixture
def dsn(admin_dsn: str, spares: Spares) -> Iterator[str]:
    """DSN of a fresh, empty database for this test only."""
    name = spares.take()
    try:
        yield with_database(admin_dsn, name)
    finally:
        drop_database(admin_dsn, name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's own database, for setting up data."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


class Templates:
    """Template databases built this session, each by its builder, kept until the session ends."""

    def __init__(self, admin_dsn: str, stack: ExitStack) -> None:
        self.admin_dsn = admin_dsn
        self.stack = stack
        self.built: dict[str, tuple[str, Any]] = {}

    def get(self, name: str, build: Callable[[str], Any]) -> tuple[str, Any]:
        """The template database for NAME, built by build(dsn) the first time, and what build returned."""
        if name not in self.built:
            template = _unique("partkey_tpl")
            url = self.stack.enter_context(scratch_database(self.admin_dsn, template))
            self.built[name] = (template, build(url))
        return self.built[name]


@pytest.fixture(scope="session")
def templates(admin_dsn: str) -> Iterator[Templates]:
    """The session's template databases."""
    with ExitStack() as stack:
        yield Templates(admin_dsn, stack)


@pytest.fixture
def clone(admin_dsn: str, templates: Templates) -> Iterator[Clone[Any]]:
    """clone(name, build) -> (DSN, build's result): a fresh copy of a database that build(dsn) filled once per session.

    For tests that build the same schema and data: the first test pays for build(), later ones get a
    CREATE DATABASE ... TEMPLATE copy (sessions still connected to the template are ended first).
    """
    with ExitStack() as copies:

        def make(name: str, build: Callable[[str], T]) -> tuple[str, T]:
            template, result = templates.get(name, build)
            url = copies.enter_context(scratch_database(admin_dsn, _unique("partkey_c"), template=template))
            return url, result

        yield make


@pytest.fixture
def does(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """Record what a command did on this server: the matrix's "what each command does" table is built from it."""

    def record(command: str, outcome: str) -> None:
        request.node.user_properties.append(("does", f"{command}\t{outcome}"))

    return record

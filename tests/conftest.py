"""Shared fixtures: one real PostgreSQL per session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.pgserver import postgres_server, scratch_database

_counter = itertools.count()


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """DSN of a superuser on the session's server."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
def dsn(admin_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database for this test only."""
    with scratch_database(admin_dsn, f"partkey_t{os.getpid()}_{next(_counter)}") as url:
        yield url


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's own database, for setting up data."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def does(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """Record what a command did on this server: the matrix's "what each command does" table is built from it."""

    def record(command: str, outcome: str) -> None:
        request.node.user_properties.append(("does", f"{command}\t{outcome}"))

    return record

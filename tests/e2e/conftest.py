"""The end-to-end tests share one demo database, built once per session and copied for each test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from exporter.demo import DemoFacts, build_demo_database
from tests.conftest import Clone


@pytest.fixture
def demo(clone: Clone[DemoFacts]) -> tuple[str, DemoFacts]:
    """DSN of a fresh copy of the demo database (20,000 rows, 100 partitions, stale keys) and its facts."""
    return clone("demo-20k", lambda url: build_demo_database(url, rows=20_000))


@pytest.fixture
def demo_conn(demo: tuple[str, DemoFacts]) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's copy of the demo database."""
    with psycopg.connect(demo[0], autocommit=True) as connection:
        yield connection

"""A small table with exactly three wrong keys, shared by the integration tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from tests.schema import create_list_table, insert_rows

ROWS, MODULUS, WRONG_IDS = 500, 5, (10, 20, 30)
TOKEN = "tok-embedded-123"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def three_wrong_keys(conn: psycopg.Connection[Any]) -> None:
    """LIST by partition_key, 5 partitions, 500 rows, 3 of them moved to the wrong partition."""
    create_list_table(conn, modulus=MODULUS, trigger=None)
    insert_rows(conn, ROWS, modulus=MODULUS)
    ids = ", ".join(str(i) for i in WRONG_IDS)
    conn.execute(f"UPDATE chunks SET partition_key = (partition_key + 1) % {MODULUS} WHERE id IN ({ids})")
    # Statistics reach pg_stat_user_tables at most once a second unless forced: the estimate must be settled.
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def load_example(relative: str) -> ModuleType:
    """Import an example module by path (examples/ itself must not go on sys.path: it has fastapi/ and celery/)."""
    path = EXAMPLES / relative
    name = "example_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

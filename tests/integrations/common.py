"""A small table with exactly three wrong keys, shared by the integration tests."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
import threading
import time
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import psycopg

from tests.schema import create_list_table, insert_rows, no_autovacuum

ROWS, MODULUS, WRONG_IDS = 500, 5, (10, 20, 30)
TOKEN = "tok-embedded-123"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def three_wrong_keys(conn: psycopg.Connection[Any]) -> None:
    """LIST by partition_key, 5 partitions, 500 rows, 3 of them moved to the wrong partition."""
    create_list_table(conn, modulus=MODULUS, trigger=None)
    # The daemon and an integration answer the same question moments apart: an autovacuum ANALYZE of a 100-row
    # partition in between (its threshold is 60 changes) made their health differ once in a loaded run.
    no_autovacuum(conn)
    insert_rows(conn, ROWS, modulus=MODULUS)
    ids = ", ".join(str(i) for i in WRONG_IDS)
    conn.execute(f"UPDATE chunks SET partition_key = (partition_key + 1) % {MODULUS} WHERE id IN ({ids})")
    # Statistics reach pg_stat_user_tables at most once a second unless forced: the estimate must be settled.
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def hold_lock(dsn: str, seconds: float, locked: threading.Event) -> None:
    """Keep an ACCESS EXCLUSIVE lock on chunks for a while, in another session (run it in a thread)."""
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
        locked.set()
        time.sleep(seconds)
        locker.rollback()


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


class Ticker:
    """Counts turns of an asyncio.sleep loop: while the event loop is blocked, the count stands still."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.ticks += 1

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()


_KNOWN_REASON = re.compile(r"values an earlier pass found good or bad: one aggregate, only new values grouped \((.*)\)")


def first_run_paths(data: Any) -> Any:
    """A report (text or JSON) with known-values partitions shown as the group-by they replace.

    Two runs of the same full verification differ only there: the first groups every single-value partition, a later
    one through the same exporter reads it by the values the first remembered (same counts, same bad pairs).
    """
    if isinstance(data, str):
        return _KNOWN_REASON.sub(r"\1", data).replace("known-values", "group-by")
    if isinstance(data, dict):
        out = {k: first_run_paths(v) for k, v in data.items()}
        if out.get("path") == "group-by" and "distinct_values" in out:
            out["distinct_values"] = None  # remembered values on one run, groups read on the other
        return out
    if isinstance(data, list):
        return [first_run_paths(v) for v in data]
    return data

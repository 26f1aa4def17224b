"""The Celery example: the task in eager mode, and beat plus a real worker on the in-memory broker."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery.beat import EmbeddedService
from celery.contrib.testing.worker import start_worker
from celery.signals import task_success

from tests.integrations.common import MODULUS, ROWS, load_example, three_wrong_keys

celery_example = load_example("celery/partkey_celery.py")
app = celery_example.app
TASK = "partkey.verify_partition_keys"


@pytest.fixture
def eager() -> Iterator[None]:
    """Tasks run in the caller, exceptions propagate."""
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield
    app.conf.update(task_always_eager=False, task_eager_propagates=False)


def test_the_task_returns_the_real_counts_and_logs_wrong_keys(
    conn: psycopg.Connection[Any], dsn: str, eager: None, caplog: pytest.LogCaptureFixture
) -> None:
    three_wrong_keys(conn)
    with caplog.at_level(logging.INFO):
        result = celery_example.verify_partition_keys.delay(mode="full", dsn=dsn, modulus=MODULUS).get()
    assert (result["rows_checked"], result["correct"], result["mismatched"]) == (ROWS, ROWS - 3, 3)
    assert (result["null_keys"], result["expression_errors"], result["clean"]) == (0, 0, False)
    assert result["table"] == "public.chunks" and len(result["examples"]) == 3
    assert "public.chunks: 3 wrong, 0 NULL and 0 unevaluable partition keys among 500 rows (full)" in caplog.text
    with pytest.raises(celery_example.WrongPartitionKeysError, match="3 wrong"):
        celery_example.verify_partition_keys.delay(mode="full", raise_on_bad=True, dsn=dsn, modulus=MODULUS).get()
    conn.execute(
        "UPDATE chunks SET partition_key = abs(hashtext(collection_id::text) % 5)"
        " WHERE partition_key IS DISTINCT FROM abs(hashtext(collection_id::text) % 5)"
    )
    repaired = celery_example.verify_partition_keys.delay(mode="full", raise_on_bad=True, dsn=dsn, modulus=5).get()
    assert (repaired["rows_checked"], repaired["mismatched"], repaired["clean"]) == (ROWS, 0, True)
    with pytest.raises(ValueError, match="mode must be sample or full"):
        celery_example.verify_partition_keys.delay(mode="incremental", dsn=dsn).get()


def test_beat_schedules_the_task_and_a_real_worker_runs_it(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    three_wrong_keys(conn)
    entry = app.conf.beat_schedule["verify-partition-keys"]
    assert entry["task"] == TASK and entry["schedule"] == 300.0 and entry["kwargs"] == {"mode": "sample"}
    # The documented environment is all the task needs; beat fires every second for the test.
    monkeypatch.setenv("PARTKEY_DSN", dsn)
    monkeypatch.setenv("PARTKEY_MODULUS", str(MODULUS))
    monkeypatch.setitem(
        app.conf.beat_schedule, "verify-partition-keys", {**entry, "schedule": 1.0, "kwargs": {"mode": "full"}}
    )
    results: queue.Queue[Any] = queue.Queue()

    def collect(sender: Any = None, result: Any = None, **_: Any) -> None:
        results.put(result)

    task_success.connect(collect, weak=False)
    beat = EmbeddedService(app, thread=True, scheduler_cls="celery.beat.Scheduler", max_interval=1)
    assert isinstance(beat, threading.Thread)  # thread=True: beat runs in a thread of this process
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            beat.start()
            fired = results.get(timeout=30)
            # The worker's result backend holds the same counts for a task sent by hand.
            sent = celery_example.verify_partition_keys.delay(mode="full", dsn=dsn, modulus=MODULUS).get(timeout=30)
    finally:
        beat.stop()
        task_success.disconnect(collect)
    assert (fired["rows_checked"], fired["mismatched"], fired["target"]) == (ROWS, 3, "embedded")
    assert (sent["rows_checked"], sent["mismatched"]) == (ROWS, 3)

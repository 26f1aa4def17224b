"""The APScheduler example: thread and asyncio schedulers, and the script run as its docstring says."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler

from exporter import AsyncPartitionImplementationDetector, PartitionImplementationDetector
from exporter.verify import VerificationResult
from tests.integrations.common import EXAMPLES, MODULUS, ROWS, Ticker, hold_lock, load_example, three_wrong_keys

example = load_example("apscheduler/partkey_apscheduler.py")


def test_background_scheduler_runs_incremental_verification(conn: psycopg.Connection[Any], dsn: str) -> None:
    three_wrong_keys(conn)
    results: queue.Queue[VerificationResult] = queue.Queue()
    scheduler = BackgroundScheduler(timezone="UTC")
    with PartitionImplementationDetector(dsn, modulus=MODULUS, monotonic_column="id") as detector:
        example.schedule_verification(scheduler, detector, "incremental", seconds=0.5, on_result=results.put)
        scheduler.start()
        try:
            first = results.get(timeout=120)
            assert (first.mode, first.rows_checked, first.mismatched) == ("incremental", 0, 0)  # sets the watermark
            conn.execute(
                "INSERT INTO chunks (collection_id, partition_key) VALUES"
                " (md5('x')::uuid, (abs(hashtext(md5('x')::uuid::text) % 5) + 2) % 5),"
                " (md5('y')::uuid, abs(hashtext(md5('y')::uuid::text) % 5))"
            )
            deadline = time.monotonic() + 120
            later = results.get(timeout=120)
            while later.rows_checked == 0 and time.monotonic() < deadline:
                later = results.get(timeout=120)
        finally:
            scheduler.shutdown(wait=True)
    assert (later.rows_checked, later.mismatched, later.null_keys) == (2, 1, 0)


def test_asyncio_scheduler_keeps_the_loop_free(conn: psycopg.Connection[Any], dsn: str) -> None:
    three_wrong_keys(conn)
    locked = threading.Event()
    holder = threading.Thread(target=hold_lock, args=(dsn, 3.0, locked))
    holder.start()
    locked.wait(5)

    async def scenario() -> tuple[VerificationResult, int]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[VerificationResult] = loop.create_future()
        scheduler = AsyncIOScheduler(timezone="UTC")
        async with (
            AsyncPartitionImplementationDetector(dsn, modulus=MODULUS, lock_timeout=10) as detector,
            Ticker(0.02) as ticker,
        ):
            example.schedule_verification(
                scheduler,
                detector,
                "full",
                seconds=60,
                on_result=lambda r: loop.call_soon_threadsafe(done.set_result, r),
            )
            scheduler.start()
            result = await asyncio.wait_for(done, timeout=120)  # after the lock is released, ~3 s from now
            scheduler.shutdown(wait=False)
        return result, ticker.ticks

    result, ticks = asyncio.run(scenario())
    holder.join()
    assert (result.mode, result.rows_checked, result.mismatched) == ("full", ROWS, 3)
    assert ticks >= 10  # the loop kept running while the job waited for the table lock


# The script as `python partkey_apscheduler.py` runs it, with Ctrl-C's default handler: a process started where SIGINT
# is ignored (any background job, such as `make test &` or a CI step run in the background) inherits that, and then
# Python never raises KeyboardInterrupt. A fresh-clone run here failed that way.
RUN_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.timeout(400)
def test_the_script_runs_as_documented(conn: psycopg.Connection[Any], dsn: str) -> None:
    three_wrong_keys(conn)
    env = {**os.environ, "PARTKEY_DSN": dsn, "PARTKEY_MODULUS": str(MODULUS), "PARTKEY_VERIFY_MODE": "full"}
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_WITH_CTRL_C, "partkey_apscheduler.py"],
        cwd=EXAMPLES / "apscheduler",
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        while line and "partition keys among" not in line:
            line = process.stderr.readline()
        assert "ERROR public.chunks: 3 wrong, 0 NULL, 0 unevaluable partition keys among 500 rows (full)" in line
        process.send_signal(signal.SIGINT)
        # The bound only means "Ctrl-C stops it".
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
        process.wait()

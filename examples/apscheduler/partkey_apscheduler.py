"""Background verification without Celery: APScheduler runs the detector inside the application's own process.

    PARTKEY_DSN=postgresql://... python partkey_apscheduler.py   # verifies every 5 minutes until Ctrl-C

A detector that lives as long as the scheduler keeps its connection and its incremental watermark between runs,
so `incremental` mode works here (the first run only sets the watermark). For an asyncio application (FastAPI's
lifespan, say), schedule_async_verification() does the same on an AsyncIOScheduler without blocking the loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from exporter import AsyncPartitionImplementationDetector, BusyError, CheckFailedError, PartitionImplementationDetector
from exporter.verify import Mode, VerificationResult

log = logging.getLogger(__name__)
JOB_OPTIONS: dict[str, Any] = {"max_instances": 1, "coalesce": True}  # a slow run is never overlapped or queued


def _report(label: str, result: VerificationResult, on_result: Callable[[VerificationResult], None] | None) -> None:
    """Log the outcome: an error when any key is bad; then hand the result on."""
    if result.clean:
        log.info("%s: %d rows checked (%s), every partition key right", label, result.rows_checked, result.mode)
    else:
        log.error("%s: %d wrong, %d NULL, %d unevaluable partition keys among %d rows (%s)", label, result.mismatched,
                  result.null_keys, result.expression_errors, result.rows_checked, result.mode)
    if on_result is not None:
        on_result(result)


def schedule_verification(
    scheduler: BaseScheduler,
    detector: PartitionImplementationDetector,
    mode: Mode = "sample",
    seconds: float = 300,
    on_result: Callable[[VerificationResult], None] | None = None,
) -> Any:
    """Add a job that verifies every `seconds` (first run now) on a thread-based scheduler; returns the Job."""

    def job() -> None:
        try:
            result = detector.verify_partition_keys(mode)
        except (BusyError, CheckFailedError) as error:  # another run holds the table, or the check failed
            log.warning("%s: verification skipped: %s", detector.label, error)
            return
        _report(detector.label, result, on_result)

    return scheduler.add_job(job, "interval", seconds=seconds, id=f"verify-{detector.label}-{mode}",
                             next_run_time=dt.datetime.now(dt.UTC), **JOB_OPTIONS)


def schedule_async_verification(
    scheduler: AsyncIOScheduler,
    detector: AsyncPartitionImplementationDetector,
    mode: Mode = "sample",
    seconds: float = 300,
    on_result: Callable[[VerificationResult], None] | None = None,
) -> Any:
    """The same on an AsyncIOScheduler: the job is a coroutine and the database work runs in a worker thread."""

    async def job() -> None:
        try:
            result = await detector.verify_partition_keys(mode)
        except (BusyError, CheckFailedError) as error:
            log.warning("%s: verification skipped: %s", detector.sync.label, error)
            return
        _report(detector.sync.label, result, on_result)

    return scheduler.add_job(job, "interval", seconds=seconds, id=f"verify-{detector.sync.label}-{mode}",
                             next_run_time=dt.datetime.now(dt.UTC), **JOB_OPTIONS)


def main() -> None:
    """Verify the PARTKEY_* table every PARTKEY_VERIFY_EVERY_SECONDS (300) in PARTKEY_VERIFY_MODE (sample)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    mode: Any = os.environ.get("PARTKEY_VERIFY_MODE", "sample")
    seconds = float(os.environ.get("PARTKEY_VERIFY_EVERY_SECONDS", "300"))
    with PartitionImplementationDetector.from_env(target="apscheduler") as detector:
        scheduler = BlockingScheduler(timezone="UTC")
        schedule_verification(scheduler, detector, mode, seconds)
        with contextlib.suppress(KeyboardInterrupt, SystemExit):  # Ctrl-C stops it cleanly
            scheduler.start()


if __name__ == "__main__":
    main()

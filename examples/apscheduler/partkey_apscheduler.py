"""Background verification without Celery: APScheduler runs the detector inside the application's own process.

    PARTKEY_DSN=postgresql://... python partkey_apscheduler.py   # verifies every 5 minutes until Ctrl-C

A detector that lives as long as the scheduler keeps its connection and its incremental watermark between runs,
so `incremental` mode works here (the first run only sets the watermark). In an asyncio application (FastAPI's
lifespan, say), give schedule_verification() an AsyncIOScheduler: the job still runs off the event loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from exporter import AsyncPartitionImplementationDetector, BusyError, CheckFailedError, PartitionImplementationDetector
from exporter.verify import Mode, VerificationResult

log = logging.getLogger(__name__)


def schedule_verification(
    scheduler: BaseScheduler,
    detector: PartitionImplementationDetector | AsyncPartitionImplementationDetector,
    mode: Mode = "sample",
    seconds: float = 300,
    on_result: Callable[[VerificationResult], None] | None = None,
) -> Any:
    """Verify now and then every `seconds`; log an error on bad keys and pass each result to on_result.

    Works on a BackgroundScheduler, and on an AsyncIOScheduler, whose executor runs a plain function in the loop's
    thread pool: the database work never blocks the event loop. Returns the APScheduler Job.
    """
    sync = detector.sync if isinstance(detector, AsyncPartitionImplementationDetector) else detector

    def job() -> None:
        try:
            result = sync.verify_partition_keys(mode)
        except (BusyError, CheckFailedError) as error:  # another run holds the table, or the check failed
            log.warning("%s: verification skipped: %s", sync.label, error)
            return
        if result.clean:
            log.info("%s: no bad partition key among %d rows checked (%s)", sync.label, result.rows_checked, mode)
        else:
            log.error(
                "%s: %d wrong, %d NULL, %d unevaluable partition keys among %d rows (%s)",
                sync.label,
                result.mismatched,
                result.null_keys,
                result.expression_errors,
                result.rows_checked,
                mode,
            )
        if on_result is not None:
            on_result(result)

    return scheduler.add_job(
        job,
        "interval",
        seconds=seconds,
        id=f"verify-{sync.label}-{mode}",
        next_run_time=dt.datetime.now(dt.UTC),
        max_instances=1,
        coalesce=True,
    )


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

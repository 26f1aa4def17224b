"""Celery: a periodic task (beat) that verifies the partition keys and logs, or raises, when any is wrong.

    PARTKEY_DSN=postgresql://... CELERY_BROKER_URL=redis://... celery -A partkey_celery worker --beat -l info

The task opens the table's detector from the PARTKEY_* environment (see PartitionImplementationDetector.from_env),
runs one verification with the daemon's code, closes the connection, and returns the counts as a JSON-ready dict.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery

from exporter import PartitionImplementationDetector

log = logging.getLogger(__name__)

app = Celery(
    "partkey",
    # The in-memory defaults suit a try-out and the tests; production sets a real broker.
    broker=os.environ.get("CELERY_BROKER_URL", "memory://"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "cache+memory://"),
)
app.conf.beat_schedule = {
    "verify-partition-keys": {
        "task": "partkey.verify_partition_keys",
        "schedule": float(os.environ.get("PARTKEY_VERIFY_EVERY_SECONDS", "300")),
        "kwargs": {"mode": os.environ.get("PARTKEY_VERIFY_MODE", "sample")},
    },
}


class WrongPartitionKeysError(Exception):
    """The verification found rows whose partition key is wrong, NULL, or cannot be computed."""


@app.task(name="partkey.verify_partition_keys")
def verify_partition_keys(mode: str = "sample", raise_on_bad: bool = False, **options: Any) -> dict[str, Any]:
    """Verify in `mode` (sample or full); log an error, or raise when raise_on_bad, if any key is bad.

    `options` override the environment (dsn=..., table=..., modulus=...). Incremental mode needs a detector that
    lives between runs to keep its watermark, so it is not offered here: use the daemon or examples/apscheduler.
    """
    if mode not in {"sample", "full"}:
        raise ValueError(f"mode must be sample or full, got {mode!r}")
    dsn = options.pop("dsn", None)
    detector = (
        PartitionImplementationDetector(dsn, **options) if dsn else PartitionImplementationDetector.from_env(**options)
    )
    with detector:
        result = detector.verify_partition_keys("full" if mode == "full" else "sample")
    summary = {"table": detector.label, "target": detector.target_name, "clean": result.clean, **result.to_dict()}
    if not result.clean:
        message = (
            f"{detector.label}: {result.mismatched} wrong, {result.null_keys} NULL and "
            f"{result.expression_errors} unevaluable partition keys among {result.rows_checked} rows ({mode})"
        )
        if raise_on_bad:
            raise WrongPartitionKeysError(message)
        log.error("%s", message)
    else:
        log.info("%s: no bad partition key among %d rows checked (%s)", detector.label, result.rows_checked, mode)
    return summary

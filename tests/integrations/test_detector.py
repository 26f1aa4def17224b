"""PartitionImplementationDetector: the plan's four methods on a real database, equal to the daemon's /report."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter import AsyncPartitionImplementationDetector, BusyError, CheckFailedError, PartitionImplementationDetector
from exporter.app import Exporter
from exporter.introspect import Implementation
from exporter.partition_stats import Distribution
from exporter.verify import VerificationResult
from tests.integrations.common import (
    MODULUS,
    ROWS,
    WRONG_IDS,
    Ticker,
    first_run_paths,
    hold_lock,
    three_wrong_keys,
)
from tests.schema import INT_MIN_COLLECTION_ID, create_list_table
from tests.support import config_for, http, serving

ROOT = Path(__file__).resolve().parents[2]


def _without_timing(data: dict[str, Any]) -> dict[str, Any]:
    """A result's dictionary without the parts that differ between two runs of the same check."""
    return {k: v for k, v in data.items() if k != "duration_seconds"}


def _stable(report: str) -> str:
    """The report without the wall-clock part of 'last success …' lines, and with first-run paths."""
    return first_run_paths(re.sub(r"last success .*", "last success <time>", report))  # type: ignore[no-any-return]


def test_four_methods_match_the_daemons_report(conn: psycopg.Connection[Any], dsn: str) -> None:
    three_wrong_keys(conn)
    # The sample mode reads random pages, so two runs differ; the report's other checks are deterministic.
    exporter = Exporter(config_for(dsn, "modulus: 5\nchecks: {verification_sample: {enabled: false}}"))
    exporter.run_all_once()
    with serving(exporter) as server:
        status, _, body = http(server.url + "/report")
        assert status == 200
        daemon_report = body.decode()
        [daemon] = exporter.health()

        with PartitionImplementationDetector(dsn, modulus=MODULUS, target="t1") as detector:
            implementation = detector.detect_implementation()
            verification = detector.verify_partition_keys("full")
            estimate = detector.get_performance_metrics()
            exact = detector.get_performance_metrics(exact=True)
            report = detector.generate_health_report()

    assert isinstance(implementation, Implementation) and isinstance(verification, VerificationResult)
    assert isinstance(estimate, Distribution) and isinstance(exact, Distribution)
    # The numbers themselves, from the database.
    assert (implementation.method, implementation.shape, implementation.partition_count) == ("none", "list", 5)
    assert implementation.major == conn.info.server_version // 10000 and not implementation.formula_overflow
    assert (verification.rows_checked, verification.mismatched, verification.null_keys) == (ROWS, 3, 0)
    assert (verification.correct, verification.expression_errors) == (ROWS - 3, 0)
    assert sorted(int(e.primary_key["id"]) for e in verification.examples) == list(WRONG_IDS)
    assert (exact.source, exact.total_rows, exact.partition_count, exact.active) == ("exact", ROWS, 5, 5)
    assert estimate.source == "estimate" and estimate.total_rows == ROWS
    # The same as the daemon's, field by field.
    assert daemon.implementation is not None
    assert implementation.to_dict() == daemon.implementation.to_dict()
    assert daemon.verification is not None
    assert _without_timing(verification.to_dict()) == _without_timing(daemon.verification.to_dict())
    assert estimate.to_dict() == daemon.results["distribution"].payload.to_dict()
    assert exact.to_dict() == daemon.results["distribution_exact"].payload.to_dict()
    assert _stable(report) == _stable(daemon_report)
    assert "  Incorrect Keys: 3" in report.splitlines() and "  Total Chunks: 500" in report.splitlines()


def _status(conn: psycopg.Connection[Any]) -> psycopg.pq.TransactionStatus:
    """The connection's transaction status now: read by a call, as a statement in between changes it."""
    return conn.info.transaction_status


def test_a_borrowed_connection_is_left_as_it_was(conn: psycopg.Connection[Any], dsn: str) -> None:
    three_wrong_keys(conn)
    with psycopg.connect(dsn) as app:  # autocommit off, as most applications have it
        app.execute("SET statement_timeout = '7s'")
        app.commit()
        detector = PartitionImplementationDetector(app, modulus=MODULUS, lock_timeout=0.2)
        assert detector.verify_partition_keys("full").mismatched == 3
        assert detector.detect_implementation().method == "none"
        assert "  Incorrect Keys: 3" in detector.generate_health_report()
        assert _status(app) == psycopg.pq.TransactionStatus.IDLE
        # Inside the application's transaction our timeouts would leak into it: refused, and nothing changed.
        app.execute("SELECT 1")
        with pytest.raises(CheckFailedError, match="inside a transaction; commit first"):
            detector.detect_implementation()
        assert _status(app) == psycopg.pq.TransactionStatus.INTRANS
        app.rollback()
        detector.close()
        assert not app.closed and _status(app) == psycopg.pq.TransactionStatus.IDLE
        row = app.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')").fetchone()
        assert row == ("7s", "0")
        with pytest.raises(CheckFailedError, match="target embedded is closed"):
            detector.detect_implementation()  # closed for good, like the daemon's targets


def test_limit_modes_and_expression_errors(conn: psycopg.Connection[Any], dsn: str) -> None:
    three_wrong_keys(conn)
    with PartitionImplementationDetector(dsn, modulus=MODULUS, monotonic_column="id", examples_limit=2) as detector:
        assert len(detector.verify_partition_keys("full").examples) == 2
        found = detector.verify_partition_keys("full", limit=3)
        assert found.mismatched == 3 and len(found.examples) == 3
        assert detector.verify_partition_keys("full", limit=0).examples == ()
        first = detector.verify_partition_keys("incremental")
        assert (first.rows_checked, first.mismatched) == (0, 0)  # the first run only sets the watermark
        conn.execute(
            "INSERT INTO chunks (collection_id, partition_key) VALUES"
            " (md5('a')::uuid, abs(hashtext(md5('a')::uuid::text) % 5)),"
            " (md5('b')::uuid, (abs(hashtext(md5('b')::uuid::text) % 5) + 1) % 5)"
        )
        later = detector.verify_partition_keys("incremental")
        assert (later.rows_checked, later.mismatched) == (2, 1)
        with pytest.raises(ValueError, match="mode must be full, sample or incremental, got 'everything'"):
            detector.verify_partition_keys("everything")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit must be between 0 and 1000"):
            detector.verify_partition_keys("full", limit=5000)
    with (
        PartitionImplementationDetector(dsn, modulus=MODULUS) as detector,
        pytest.raises(ValueError, match="no monotonic_column"),
    ):
        detector.verify_partition_keys("incremental")


def test_legacy_formula_counts_the_int_min_row_as_an_expression_error(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=100, trigger=None)
    conn.execute("INSERT INTO chunks (collection_id, partition_key) VALUES (%s, 48)", (INT_MIN_COLLECTION_ID,))
    with PartitionImplementationDetector(dsn, key_expression="legacy") as detector:
        found = detector.verify_partition_keys("full")
    assert (found.rows_checked, found.expression_errors, found.mismatched) == (1, 1, 0)
    assert found.examples[0].kind == "error" and "integer out of range" in (found.examples[0].error or "")


def test_failures_raise_with_the_daemons_message(conn: psycopg.Connection[Any], dsn: str) -> None:
    with (
        PartitionImplementationDetector(dsn, table="missing") as detector,
        pytest.raises(CheckFailedError, match=r"implementation of public\.missing failed: .*missing") as failed,
    ):
        detector.detect_implementation()
    assert failed.value.result.success is False
    three_wrong_keys(conn)
    with (
        psycopg.connect(dsn) as locker,
        PartitionImplementationDetector(dsn, modulus=MODULUS, lock_timeout=0.3) as detector,
    ):
        locker.execute("LOCK TABLE chunks IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(CheckFailedError, match=r"lock wait exceeded lock_timeout=0.3s"):
            detector.verify_partition_keys("full")
        locker.rollback()
        assert detector.verify_partition_keys("full").mismatched == 3  # and the detector carries on


def test_async_detector_keeps_the_loop_running_and_refuses_a_second_verification(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    three_wrong_keys(conn)
    locked = threading.Event()
    holder = threading.Thread(target=hold_lock, args=(dsn, 1.5, locked))

    async def scenario() -> tuple[int, VerificationResult, BaseException | None, Implementation]:
        async with (
            AsyncPartitionImplementationDetector(dsn, modulus=MODULUS, lock_timeout=10) as detector,
            Ticker(0.05) as ticker,
        ):
            holder.start()
            await asyncio.to_thread(locked.wait, 5)
            verification = asyncio.create_task(detector.verify_partition_keys("full"))
            await asyncio.sleep(0.3)  # the first verification is now waiting for the lock
            second: BaseException | None = None
            try:
                await detector.verify_partition_keys("sample")
            except BusyError as error:
                second = error
            ticks_before = ticker.ticks
            result = await verification
            ticked = ticker.ticks - ticks_before
            implementation = await detector.detect_implementation()
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            with pytest.raises(TypeError, match="AsyncConnection cannot be shared"):
                AsyncPartitionImplementationDetector(aconn)
        return ticked, result, second, implementation

    ticked, result, second, implementation = asyncio.run(scenario())
    holder.join()
    # The verification waited ~1.2 s for the lock; a blocked loop would not have ticked at all meanwhile.
    assert ticked >= 10
    assert (result.rows_checked, result.mismatched) == (ROWS, 3)
    assert isinstance(second, BusyError) and "already running" in str(second)
    assert implementation.method == "none"


def test_from_env(conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    three_wrong_keys(conn)
    monkeypatch.setenv("PARTKEY_DSN", dsn)
    monkeypatch.setenv("PARTKEY_MODULUS", "5")
    with PartitionImplementationDetector.from_env(target="env") as detector:
        assert detector.table_config.modulus == 5 and detector.target_name == "env"
        assert detector.verify_partition_keys().mismatched == 3
    monkeypatch.delenv("PARTKEY_DSN")
    with pytest.raises(ValueError, match="set PARTKEY_DSN"):
        PartitionImplementationDetector.from_env()


def test_core_install_does_not_pull_in_fastapi_or_celery() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    assert "fastapi" not in core and "celery" not in core and "httpx" not in core
    extras = project["optional-dependencies"]
    assert extras["fastapi"] == ["fastapi>=0.110", "httpx>=0.27"] and extras["celery"] == ["celery>=5.3"]
    code = "import sys, exporter; print(sorted(m for m in ('fastapi', 'celery', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_health_serves_the_latest_results_while_another_refresh_runs(conn: psycopg.Connection[Any], dsn: str) -> None:
    three_wrong_keys(conn)
    with PartitionImplementationDetector(dsn, modulus=MODULUS, cache_seconds=0) as detector:
        [first] = detector.health()  # nothing to serve yet: this one runs the checks
        assert first.bad_rows == 3 and first.status == "unhealthy"
        conn.execute(f"UPDATE chunks SET partition_key = (partition_key + 1) % {MODULUS} WHERE id = 40")
        with detector._refresh_lock:  # as if a long refresh were running in another thread
            started = time.monotonic()
            [served] = detector.health()
            assert time.monotonic() - started < 0.5 and served.bad_rows == 3  # the latest results, at once
        [fresh] = detector.health()
        assert fresh.bad_rows == 4

"""Freshness after a reconnect: an outage is noticed between checks, and the comeback runs the due checks at once."""

from __future__ import annotations

import time

import psycopg

from exporter.app import Exporter
from exporter.reconnect import due_after_outage
from exporter.snapshot import CheckResult
from tests.reliability.harness import PrivateServer, config, our_backends, succeeded_since
from tests.support import poll

LIGHT = ("implementation", "distribution")
HOURLY = {
    "implementation": "{interval: 1h}",
    "distribution": "{interval: 1h}",
    "verification_full": "{interval: 1h}",
}


def _result(exporter: Exporter, check: str) -> CheckResult | None:
    return exporter.store.latest("t1", "public.chunks", check)


def test_a_restart_is_noticed_and_the_due_checks_run_at_once(table: str, own_server: PrivateServer) -> None:
    """Checks every hour: no scheduled run helps, yet up falls and fresh values come back right after the restart."""
    exporter = Exporter(config(table, checks=HOURLY))
    exporter.start()
    try:
        poll(
            lambda: all(succeeded_since(exporter, c, 0) for c in (*LIGHT, "verification_full")), "every check succeeded"
        )
        full_before = _result(exporter, "verification_full")
        target = exporter.targets["t1"]
        own_server.stop()
        # No check runs for an hour: the watcher sees the server close the idle connection.
        poll(lambda: target.up is False, "the outage noticed between checks")
        own_server.start()
        accepting = time.time()
        poll(lambda: all(succeeded_since(exporter, c, accepting) for c in LIGHT), "fresh values")
        fresh_after = max(_result(exporter, c).finished_at for c in LIGHT) - accepting  # type: ignore[union-attr]
        print(f"fresh values {fresh_after:.2f} s after the server accepted connections")
        with psycopg.connect(own_server.admin_dsn) as admin:
            assert len(our_backends(admin)) == 1  # the comeback reuses the one connection
    finally:
        exporter.stop()
    assert target.up is True
    # The heavy scan succeeded before the outage and is not due for an hour: the comeback leaves it alone.
    assert _result(exporter, "verification_full") == full_before
    # The due checks ran one after another, implementation first: no burst on the target.
    runs = sorted(
        (r.finished_at - r.duration_seconds, r.finished_at, r.check)
        for r in (_result(exporter, c) for c in LIGHT)
        if r is not None
    )
    # (They are scheduled COMEBACK_STAGGER apart and share the target's one connection, so they cannot overlap on the
    # server; their end-to-start gap is not asserted: a loaded machine makes the second queue for the connection.)
    assert [check for _, _, check in runs] == ["implementation", "distribution"]
    assert runs[0][1] <= runs[1][1], runs  # implementation finished first


def test_a_check_that_failed_during_the_outage_is_due(table: str) -> None:
    """due_after_outage: failed or missed runs are due; light checks also when they predate the outage."""
    exporter = Exporter(config(table, checks=HOURLY))
    exporter.run_all_once()
    now = time.time()
    for check, heavy_due in (("implementation", True), ("verification_full", False)):
        runner = exporter.runners[("t1", "public.chunks", check)]
        result = _result(exporter, check)
        assert result is not None and result.success
        assert due_after_outage(runner, result, down_since=now, now=now + 1) is heavy_due
        assert due_after_outage(runner, result, down_since=result.finished_at - 10, now=now + 1) is False
        failed = CheckResult(**{**result.__dict__, "success": False, "error": "target t1 is down"})
        assert due_after_outage(runner, failed, down_since=now, now=now + 1) is True
        assert due_after_outage(runner, result, down_since=None, now=now + 3601) is True  # its run was missed
        assert due_after_outage(runner, None, down_since=None, now=now) is True
    exporter.stop()

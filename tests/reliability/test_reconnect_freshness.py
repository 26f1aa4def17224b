"""Freshness after a reconnect: an outage is noticed between checks, and the comeback runs the due checks at once."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

import psycopg

from exporter.app import COMEBACK_STAGGER, Exporter
from exporter.reconnect import LIGHT_CHECKS, ReconnectWatcher, comeback_order, due_after_outage
from exporter.snapshot import CheckResult
from tests.reliability.harness import PrivateServer, config, database_of, our_backends, succeeded_since
from tests.support import poll

LIGHT = ("implementation", "distribution")
HOURLY = {
    "implementation": "{interval: 1h}",
    "distribution": "{interval: 1h}",
    "verification_full": "{interval: 1h}",
}

# Every check on, hourly: the light reads, the incremental window (needs the monotonic column) and the heavy scans.
EVERY_CHECK_HOURLY = {
    **HOURLY,
    "verification_sample": "{interval: 1h}",
    "distribution_exact": "{interval: 1h}",
}
MONOTONIC = "        monotonic_column: id"


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
        # Taken before the start: the comeback can finish before pg_ctl's own readiness poll returns, and a later
        # mark would miss those runs and then wait an hour for the next (found by a 20-run loop at low load).
        starting = time.time()
        own_server.start()
        poll(lambda: all(succeeded_since(exporter, c, starting) for c in LIGHT), "fresh values")
        fresh_after = max(_result(exporter, c).finished_at for c in LIGHT) - starting  # type: ignore[union-attr]
        print(f"fresh values {fresh_after:.2f} s after the server was started")
        with psycopg.connect(own_server.admin_dsn) as admin:
            assert len(our_backends(admin, database=database_of(table))) == 1  # the comeback reuses the one connection
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


def test_the_reconnect_attempt_that_succeeds_schedules_the_comeback(table: str, own_server: PrivateServer) -> None:
    """The attempt that reconnects schedules the due checks itself, once; no later watcher round is waited for."""
    exporter = Exporter(config(table, checks=EVERY_CHECK_HOURLY, table_extra=MONOTONIC))
    exporter.run_all_once()
    scheduled: list[list[tuple[str, str, str]]] = []
    # Not started: this test turns the rounds itself, so nothing happens between its steps.
    watcher = ReconnectWatcher(exporter.targets, exporter.runners, exporter.store, scheduled.append)
    target = exporter.targets["t1"]
    try:
        own_server.stop()
        watcher.round()  # the server closed the idle connection: the poll sees it without a query
        assert target.up is False
        assert scheduled == []
        own_server.start()
        watcher.reconnect("t1", target)  # one attempt, as the watcher's pool runs it
        assert target.up is True
        assert len(scheduled) == 1, "the comeback must come from the attempt that reconnected"
        names = [check for _, _, check in scheduled[0]]
        # Implementation first; the light reads, whose values a restart may change; the hourly scan that succeeded
        # before the outage is not due.
        assert names[0] == "implementation"
        assert set(names) >= {"implementation", "distribution", "verification_incremental"}
        assert not {"verification_full", "verification_sample", "distribution_exact"} & set(names)
        watcher.round()
        watcher.round()
        assert len(scheduled) == 1, "one comeback per recovery, whoever looks"
    finally:
        watcher.stop()
        exporter.stop()


def test_the_light_checks_come_back_before_the_heavy_scans(table: str) -> None:
    """comeback_order: implementation, then every light check, then the heavy scans, whatever their names."""
    exporter = Exporter(config(table, checks=EVERY_CHECK_HOURLY, table_extra=MONOTONIC))
    try:
        order = [runner.check.name for runner in comeback_order(list(exporter.runners.values()))]
    finally:
        exporter.stop()
    assert order[0] == "implementation"
    light = [index for index, name in enumerate(order) if name in LIGHT_CHECKS]
    heavy = [index for index, name in enumerate(order) if name not in LIGHT_CHECKS]
    assert heavy and light and max(light) < min(heavy), order
    # Names alone would have put distribution_exact (a count of every row) before verification_incremental.
    assert order.index("verification_incremental") < order.index("distribution_exact"), order


def test_a_comeback_is_spread_over_the_target_not_a_burst(table: str) -> None:
    """run_soon: the first due check at once, each next one COMEBACK_STAGGER later, in the order given."""
    exporter = Exporter(config(table, checks=HOURLY))
    exporter.start()
    try:
        assert exporter.scheduler is not None
        exporter.scheduler.pause()  # keeps the moved run times where run_soon put them, for this test to read
        runners = comeback_order(list(exporter.runners.values()))
        before = datetime.now(UTC)
        exporter.run_soon([runner.key for runner in runners])
        after = datetime.now(UTC)
        times = [exporter.scheduler.get_job("/".join(runner.key)).next_run_time for runner in runners]
    finally:
        exporter.stop()
    assert before <= times[0] <= after  # the first one at once
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    assert gaps and all(abs(gap - COMEBACK_STAGGER) < 1e-3 for gap in gaps), gaps  # none together, none held back

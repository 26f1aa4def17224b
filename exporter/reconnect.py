"""Freshness after a reconnect: notice an outage between checks, reconnect at once, then run the due checks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from exporter.checks.runner import CheckRunner
from exporter.snapshot import CheckResult, SnapshotSource
from exporter.target import Target

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.5  # how often each target is looked at: a comeback is noticed within this (goal: fresh in 2 s)
WATCH_WORKERS = 4  # reconnect attempts in parallel, so one unreachable host (connect_timeout) holds up no other
# Checks a comeback re-runs even when they last succeeded within their interval: cheap catalog and statistics
# reads whose values may have changed with the restart (a failover, a restore). The heavy scans run only when due.
LIGHT_CHECKS = frozenset({"implementation", "verification_incremental", "distribution", "insert_probe"})

Key = tuple[str, str, str]


def due_after_outage(runner: CheckRunner, result: CheckResult | None, down_since: float | None, now: float) -> bool:
    """Should this check run as soon as its target is back?"""
    if result is None or not result.success or result.last_success_at is None:
        return True  # never ran, or its run failed during the outage
    if now - result.last_success_at >= runner.interval:
        return True  # its scheduled run was missed
    light = runner.check.name in LIGHT_CHECKS
    return light and (down_since is None or result.last_success_at <= down_since)


def comeback_order(runners: Sequence[CheckRunner]) -> list[CheckRunner]:
    """Implementation first (it tells the others what the table is), then the rest in a stable order."""
    return sorted(runners, key=lambda r: (r.check.name != "implementation", r.key))


class ReconnectWatcher:
    """A thread that looks at every target each WATCH_SECONDS and reacts to a comeback."""

    def __init__(
        self,
        targets: Mapping[str, Target],
        runners: Mapping[Key, CheckRunner],
        store: SnapshotSource,
        run_soon: Callable[[list[Key]], None],
    ) -> None:
        self.targets = targets
        self.runners = runners
        self.store = store
        self.run_soon = run_soon
        self._seen = {name: target.recoveries for name, target in targets.items()}
        self._down_since: dict[str, float | None] = {}
        self._pending: dict[str, Future[None]] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=WATCH_WORKERS, thread_name_prefix="reconnect")
        self._thread = threading.Thread(target=self._loop, name="reconnect-watcher", daemon=True)

    def replace(self, targets: Mapping[str, Target], runners: Mapping[Key, CheckRunner]) -> None:
        """A reload changed the targets: watch these from the next round (a new target starts with no comeback)."""
        self._seen = {name: self._seen.get(name, target.recoveries) for name, target in targets.items()}
        self.targets, self.runners = targets, runners

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; an attempt in flight ends with its connect_timeout."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        """Every WATCH_SECONDS: one round over the targets."""
        while not self._stop.wait(WATCH_SECONDS):
            try:
                self.round()
            except Exception:  # the watcher must outlive any bug in one round
                log.exception("reconnect watcher round failed")

    def round(self) -> None:
        """Look at every target once: poll the up ones, reconnect the down ones, schedule the comebacks' checks."""
        for name, target in self.targets.items():
            if target.down_since is not None and target.up is False:
                self._down_since[name] = target.down_since
            if target.recoveries != self._seen[name]:
                self._seen[name] = target.recoveries
                self._comeback(name)
            if target.up is not False:
                target.watch()  # never blocks: a busy target is skipped, an idle socket is polled without waiting
                continue
            pending = self._pending.get(name)
            if (pending is None or pending.done()) and not self._stop.is_set():
                self._pending[name] = self._pool.submit(target.watch)  # a connect may take its connect_timeout

    def _comeback(self, name: str) -> None:
        """Run the target's due checks now, one after another (they share its one connection)."""
        snapshot = self.store.current
        now = time.time()
        down_since = self._down_since.pop(name, None)
        mine = [runner for key, runner in self.runners.items() if key[0] == name]
        due = [r for r in comeback_order(mine) if due_after_outage(r, snapshot.results.get(r.key), down_since, now)]
        log.info("target %s is back: running %d due checks now", name, len(due))
        self.run_soon([runner.key for runner in due])

"""Wires config, targets, checks, the scheduler and the snapshot store together."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from exporter.admin import BusyError, UnknownTableError
from exporter.checks.registry import checks_for
from exporter.checks.runner import CheckRunner
from exporter.checks.verification import TableVerificationState, VerificationCheck
from exporter.collector import PartkeyCollector
from exporter.config import Config, TableConfig, TargetConfig
from exporter.discovery import DiscoveryRunner, Found, TargetDiscovery
from exporter.exposition import Exposition
from exporter.phase import PhasedTrigger, phase_of
from exporter.reconnect import ReconnectWatcher
from exporter.report import TableHealth
from exporter.scan_target import ScanRoute
from exporter.slots import ConnectionSlots
from exporter.snapshot import CheckResult, SnapshotStore
from exporter.target import Target
from exporter.verify import Mode

log = logging.getLogger(__name__)

FIRST_CHECK_SECONDS = 0.5  # after the implementation check, which tells the others what the table is
STAGGER_SECONDS = 0.2  # between two first runs on one target
# Between two due checks of a target that came back: they queue on its one connection anyway; the gap keeps
# the order (implementation first) and lets other targets' checks interleave.
COMEBACK_STAGGER = 0.05


# How every check is scheduled. A run that waited in a busy pool (every worker waiting for a connection slot under
# max_connections, say) still runs, once: no grace limit, so it is never dropped as missed (with APScheduler's
# default of 1 s, a fleet's first runs, 1,000 at once for 200 targets, queued past the limit were dropped and
# those targets had no data for another interval); coalesce, so several missed slots make one run; one instance,
# so a check that outlives its interval is not started twice.
JOB_OPTIONS: dict[str, Any] = {"misfire_grace_time": None, "coalesce": True, "max_instances": 1}


def make_scheduler(max_workers: int) -> BackgroundScheduler:
    """The checks' scheduler: MAX_WORKERS threads, JOB_OPTIONS for every job."""
    executor = ThreadPoolExecutor(max_workers=max_workers)
    return BackgroundScheduler(executors={"default": executor}, job_defaults=JOB_OPTIONS, timezone="UTC")


def connections_wanted(targets: list[TargetConfig]) -> int:
    """One connection per target, and a second for a target with a scan_dsn (its standby), under the same cap."""
    return len(targets) + sum(1 for t in targets if t.scan_dsn is not None or t.scan_dsn_file is not None)


# A target's pieces while they are built: targets, tables, verification states, check runners, standby routes,
# discovery runners.
_Parts = tuple[
    dict[str, Target],
    dict[tuple[str, str], TableConfig],
    dict[tuple[str, str], TableVerificationState],
    dict[tuple[str, str, str], CheckRunner],
    dict[str, ScanRoute],
    dict[str, DiscoveryRunner],
]


class _SkippedRunFilter(logging.Filter):
    """APScheduler warns on every skipped run of a check that outlives its interval; the Exporter logs it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop APScheduler's per-run 'maximum number of running instances' warning."""
        return "maximum number of running instances" not in str(record.msg)


_SKIPPED_RUNS = _SkippedRunFilter()


def first_run_delays(runners: Mapping[tuple[str, str, str], CheckRunner]) -> dict[tuple[str, str, str], float]:
    """Seconds until each check's first run: staggered within its target, not across the fleet."""
    # Each target starts at a random offset within a second, its implementation checks first, then its other
    # checks STAGGER_SECONDS apart: one target is never hit by all its checks at once, and the last target of a
    # fleet gets data as soon as the first (a global index put the 200th target's first data ~4 minutes late).
    offsets: dict[str, float] = {}
    counts: dict[str, int] = {}
    delays: dict[tuple[str, str, str], float] = {}
    ordered = sorted(runners.items(), key=lambda item: (item[0][0], item[1].check.name != "implementation", item[0]))
    for key, runner in ordered:
        target = key[0]
        offset = offsets.setdefault(target, random.random())
        index = counts.get(target, 0)
        counts[target] = index + 1
        if runner.check.name == "implementation":
            delays[key] = offset
        else:
            delays[key] = offset + FIRST_CHECK_SECONDS + index * STAGGER_SECONDS
    return delays


class Exporter:
    """The daemon's state: one Target per database, one CheckRunner per check, one store, one registry."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = SnapshotStore()
        self.targets: dict[str, Target] = {}
        self.tables: dict[tuple[str, str], TableConfig] = {}
        self.runners: dict[tuple[str, str, str], CheckRunner] = {}
        self.verify_states: dict[tuple[str, str], TableVerificationState] = {}
        self.scans: dict[str, ScanRoute] = {}  # by target name: the targets with a scan_dsn
        # tables: auto. Discovery replaces these maps whole (copy on write): readers in other threads never
        # see one half-changed.
        self.discovery: dict[str, DiscoveryRunner] = {}
        self._discovered: dict[str, dict[str, TableConfig]] = {}
        self._tables_lock = threading.Lock()
        owned = config.owned_targets()
        cap = config.max_connections
        # With no more connections than the cap, every target keeps its own: no queue to manage.
        self.slots = ConnectionSlots(cap) if cap is not None and cap < connections_wanted(owned) else None
        if len(owned) < len(config.targets):
            index, total = config.sharding()
            log.info("shard %d of %d: checking %d of %d targets", index, total, len(owned), len(config.targets))
        self._dsns = self._target_dsns(owned)
        for target_config in owned:
            self._add_target(target_config, self._dsns[target_config.name])
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = PartkeyCollector(self.store, self.targets)
        self.registry.register(self._collector)
        self.scheduler: Any = None
        self.watcher: ReconnectWatcher | None = None
        self.admin_token = config.admin_token()
        self.exposition = Exposition(self.store, list(self.targets))
        self.store.subscribe(self.exposition.refresh)
        self._overrunning: set[str] = set()

    def _add_target(
        self, target_config: TargetConfig, dsns: tuple[str, str | None], parts: _Parts | None = None
    ) -> None:
        """One target with its tables, standby route and runners (not scheduled) into PARTS, or into self."""
        targets, tables, states, runners, scans, discovery = parts or (
            self.targets,
            self.tables,
            self.verify_states,
            self.runners,
            self.scans,
            self.discovery,
        )
        dsn, scan_dsn = dsns

        def connection(name: str, dsn: str) -> Target:
            """A connection with the target's timeouts, under the exporter's connection cap."""
            return Target(
                name,
                dsn,
                connect_timeout=target_config.connect_timeout,
                lock_timeout=target_config.lock_timeout,
                slots=self.slots,
            )

        target = connection(target_config.name, dsn)
        targets[target.name] = target
        if scan_dsn is not None:
            # Its own name: log lines and the slot queue tell the standby's connection from the primary's.
            scans[target.name] = ScanRoute(connection(f"{target.name} (scan_dsn)", scan_dsn))
        for table in target_config.configured_tables:
            self._add_table(target, table, tables, states, runners, scans)
        if target_config.auto:
            discovery[target.name] = DiscoveryRunner(target, target_config, self.store, self.apply_discovery)

    @staticmethod
    def _target_dsns(targets: list[TargetConfig]) -> dict[str, tuple[str, str | None]]:
        """Each target's DSN and scan DSN as resolved now (a file's text may change while the config does not)."""
        return {target.name: (target.resolve_dsn(), target.resolve_scan_dsn()) for target in targets}

    def reconfigure(self, config: Config) -> bool:
        """Apply a config that differs only in its targets, in place; False when anything else changed."""
        # Unchanged targets (same config, same DSNs) keep their connection, snapshot and schedule; removed and
        # changed ones are stopped (a changed one starts again, fresh); added ones start as at startup. A DSN or
        # token that cannot be read raises ConfigError before anything changed.
        if config.model_dump(exclude={"targets", "targets_dir"}) != self.config.model_dump(
            exclude={"targets", "targets_dir"}
        ):
            return False
        owned = config.owned_targets()
        cap = config.max_connections
        if (cap is not None and cap < connections_wanted(owned)) != (self.slots is not None):
            return False  # the cap starts or stops mattering: the targets' connection slots change
        dsns = self._target_dsns(owned)
        admin_token = config.admin_token()  # its file or variable may have changed: read (and refuse) like a start
        old_configs = {t.name: t for t in self.config.owned_targets()}
        kept = {t.name for t in owned if old_configs.get(t.name) == t and self._dsns.get(t.name) == dsns[t.name]}
        with self._tables_lock:
            stopped = [name for name in self.targets if name not in kept]
            self._unschedule([f"{name}/discovery" for name in stopped if name in self.discovery])
            self._unschedule(["/".join(key) for key in self.runners if key[0] in stopped])
            for name in stopped:
                self.targets[name].close()
                if name in self.scans:
                    self.scans[name].target.close()
            # New mappings, swapped in whole: HTTP threads and the watcher iterate the old ones meanwhile.
            parts: _Parts = (
                {name: target for name, target in self.targets.items() if name in kept},
                {key: table for key, table in self.tables.items() if key[0] in kept},
                {key: state for key, state in self.verify_states.items() if key[0] in kept},
                {key: runner for key, runner in self.runners.items() if key[0] in kept},
                {name: scan for name, scan in self.scans.items() if name in kept},
                {name: runner for name, runner in self.discovery.items() if name in kept},
            )
            started = [target for target in owned if target.name not in kept]
            for target_config in started:
                self._add_target(target_config, dsns[target_config.name], parts)
            targets, tables, states, runners, scans, discovery = parts
            self.targets = {t.name: targets[t.name] for t in owned}  # config order, as a fresh start has it
            self.tables, self.verify_states, self.runners = tables, states, runners
            self.scans, self.discovery = scans, discovery
            self._discovered = {name: found for name, found in self._discovered.items() if name in kept}
            self.store.forget(stopped)
            self.config, self._dsns, self.admin_token = config, dsns, admin_token
            self.exposition.set_targets(list(self.targets), stopped)
            self.registry.unregister(self._collector)
            self._collector = PartkeyCollector(self.store, self.targets)
            self.registry.register(self._collector)
            if self.scheduler is not None:
                self._schedule_discovery({name: discovery[name] for name in discovery if name not in kept})
                self._schedule({key: runner for key, runner in runners.items() if key[0] not in kept})
            if self.watcher is not None:
                self.watcher.replace(self.targets, self.runners)
        log.info(
            "configuration reloaded in place: %d targets kept, %d stopped, %d started",
            len(kept),
            len(stopped),
            len(started),
        )
        return True

    def _add_table(
        self,
        target: Target,
        table: TableConfig,
        tables: dict[tuple[str, str], TableConfig],
        states: dict[tuple[str, str], TableVerificationState],
        runners: dict[tuple[str, str, str], CheckRunner],
        scans: Mapping[str, ScanRoute] | None = None,
    ) -> None:
        """Add one watched table and its check runners to these maps."""
        state = TableVerificationState()
        tables[(target.name, table.label)] = table
        states[(target.name, table.label)] = state
        scan = (self.scans if scans is None else scans).get(target.name)
        for check, settings in checks_for(table, state):
            runner = CheckRunner(target, check, self.store, settings.interval, settings.statement_timeout, scan=scan)
            runners[runner.key] = runner

    def apply_discovery(self, target: Target, found: list[Found]) -> None:
        """Watch the tables discovery found on a target: new ones start now, dropped ones lose their series."""
        target_name = target.name
        with self._tables_lock:
            if self.targets.get(target_name) is not target:
                return  # a reload removed or replaced the target while its discovery ran: the new one rediscovers
            old = self._discovered.get(target_name, {})
            new = {item.table.label: item.table for item in found}
            gone = {label for label, table in old.items() if new.get(label) != table}
            added = {label: table for label, table in new.items() if old.get(label) != table}
            if not gone and not added:
                return
            dropped = [(target_name, label) for label in gone]
            tables = {k: v for k, v in self.tables.items() if k not in dropped}
            states = {k: v for k, v in self.verify_states.items() if k not in dropped}
            runners = {k: v for k, v in self.runners.items() if k[:2] not in dropped}
            removed = [key for key in self.runners if key not in runners]
            fresh: dict[tuple[str, str, str], CheckRunner] = {}
            for table in added.values():
                self._add_table(self.targets[target_name], table, tables, states, fresh)
            self.store.retire(target_name, gone)
            self.store.reinstate(target_name, set(added))
            self.tables, self.verify_states, self.runners = tables, states, {**runners, **fresh}
            self._discovered[target_name] = new
            if self.watcher is not None:
                self.watcher.runners = self.runners
            self._unschedule(["/".join(key) for key in removed])
            if self.scheduler is not None:
                self._schedule(fresh)
        log.info(
            "%s: discovery watches %d tables (%d new, %d gone)", target_name, len(new), len(added), len(gone - set(new))
        )

    def discover_now(self) -> None:
        """Run every target's discovery once, in this thread (one-shot commands and tests)."""
        for runner in self.discovery.values():
            runner.run()

    def render_metrics(self, accept: str, *, target: str | None = None, compress: bool = False) -> tuple[bytes, str]:
        """The /metrics body (or one target's, for /probe) for this Accept header, from the cached fragments."""
        if target is not None and target not in self.targets:
            raise UnknownTableError(f"unknown target {target!r}")
        return self.exposition.render(accept, target=target, compress=compress)

    def start(self) -> None:
        """Schedule every check; the first runs start within a few seconds, staggered."""
        self.scheduler = make_scheduler(self.config.max_workers)
        self._schedule_discovery(self.discovery)
        self._schedule(self.runners)
        logging.getLogger("apscheduler.scheduler").addFilter(_SKIPPED_RUNS)
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self.scheduler.start()
        self.exposition.start()
        self.watcher = ReconnectWatcher(self.targets, self.runners, self.store, self.run_soon)
        self.watcher.start()
        log.info("scheduled %d checks on %d targets", len(self.runners), len(self.targets))

    def _unschedule(self, job_ids: list[str]) -> None:
        """Remove these jobs from the scheduler, if it runs; one already gone (a reload raced it) is no error."""
        if self.scheduler is None:
            return
        for job_id in job_ids:
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(job_id)

    def _schedule_discovery(self, runners: Mapping[str, DiscoveryRunner]) -> None:
        """Add these targets' discovery runs: first within a second (it tells the checks which tables), then phased."""
        now = datetime.now().astimezone()
        for name, discovery in sorted(runners.items()):
            job_id = f"{name}/discovery"
            self.scheduler.add_job(
                discovery.run,
                PhasedTrigger(discovery.interval, phase_of(name, job_id, discovery.interval)),
                next_run_time=now + timedelta(seconds=random.random()),
                id=job_id,
                **JOB_OPTIONS,
            )

    def _schedule(self, runners: Mapping[tuple[str, str, str], CheckRunner]) -> None:
        """Add these checks: first runs staggered per target, later runs at the target's phase of each interval."""
        # A fleet's every-minute checks would otherwise all run in the same second of each minute (their first
        # runs come within seconds of one another) and publish a burst of snapshots; the phase from the target's
        # name spreads them over the interval and is the same after a restart or a reload.
        now = datetime.now().astimezone()
        delays = first_run_delays(runners)
        for key, runner in sorted(runners.items()):
            job_id = "/".join(key)
            self.scheduler.add_job(
                runner.run,
                PhasedTrigger(runner.interval, phase_of(key[0], job_id, runner.interval)),
                next_run_time=now + timedelta(seconds=delays[key]),
                id=job_id,
                **JOB_OPTIONS,
            )

    def _on_job_event(self, event: JobEvent) -> None:
        """Log once when a check outlives its interval (its next runs are skipped), not once per skipped run."""
        if event.code == EVENT_JOB_MAX_INSTANCES:
            if event.job_id not in self._overrunning:
                self._overrunning.add(event.job_id)
                log.warning(
                    "%s is still running after its interval: later runs are skipped until it ends", event.job_id
                )
        else:
            self._overrunning.discard(event.job_id)

    def run_soon(self, keys: list[tuple[str, str, str]]) -> None:
        """Move these checks' next runs to now, COMEBACK_STAGGER_SECONDS apart in the order given."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        now = datetime.now().astimezone()
        for index, key in enumerate(keys):
            with contextlib.suppress(JobLookupError):  # a check added or removed meanwhile by a reload
                scheduler.modify_job("/".join(key), next_run_time=now + timedelta(seconds=index * COMEBACK_STAGGER))

    def stop(self) -> None:
        """Stop scheduling, wait briefly for running checks, close every connection."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        self.exposition.stop()
        for target in self.targets.values():
            target.close()
        for scan in self.scans.values():
            scan.target.close()

    def run_all_once(self) -> None:
        """Run every discovery and then every check once, in order, in this thread (one-shot commands and tests)."""
        self.discover_now()
        for _key, runner in sorted(self.runners.items(), key=lambda item: item[1].check.name != "implementation"):
            runner.run()

    def health(self, target: str | None = None, table: str | None = None) -> list[TableHealth]:
        """The health of every configured table, or of the one asked for."""
        if target is not None and target not in self.targets:
            raise UnknownTableError(f"unknown target {target!r}")
        if table is not None and not any(t == table for _, t in self.tables):
            raise UnknownTableError(f"unknown table {table!r}")
        snapshot = self.store.current
        found = []
        for target_name, label in self.tables:
            if (target is not None and target_name != target) or (table is not None and label != table):
                continue
            results = {c: r for (t, tb, c), r in snapshot.results.items() if t == target_name and tb == label}
            up = bool(snapshot.target_up.get(target_name))
            found.append(TableHealth(target=target_name, table=label, target_up=up, results=results))
        return found

    def verify_now(self, target: str | None, table: str | None, mode: Mode) -> CheckResult:
        """Run a verification immediately; raise BusyError when one is already running on that table."""
        matches = [(t, tb) for (t, tb) in self.tables if (target in (None, t)) and (table in (None, tb))]
        if not matches:
            raise UnknownTableError(f"unknown target/table {target or '*'}/{table or '*'}")
        if len(matches) > 1:
            raise UnknownTableError("several tables match: name the target and the table")
        key = matches[0]
        state = self.verify_states[key]
        if not state.lock.acquire(blocking=False):
            raise BusyError(f"a verification of {key[1]} on {key[0]} is already running")
        try:
            runner = self.runners.get((*key, f"verification_{mode}"))
            if runner is None:
                table_config = self.tables[key]
                if mode == "incremental" and table_config.monotonic_column is None:
                    raise UnknownTableError(f"{key[1]} has no monotonic_column: incremental mode is unavailable")
                settings = getattr(table_config.checks, f"verification_{mode}")
                runner = CheckRunner(
                    self.targets[key[0]],
                    VerificationCheck(table_config, mode, state),
                    self.store,
                    settings.interval,
                    settings.statement_timeout,
                    scan=self.scans.get(key[0]),
                )
            return runner.run()
        finally:
            state.lock.release()

    def discoveries(self, target: str | None = None) -> list[TargetDiscovery]:
        """Each tables: auto target's last discovery (the selected one's) and its configured tables, by name."""
        results = self.store.current.discoveries
        configs = {config.name: config for config in self.config.owned_targets()}
        return [
            (results[name], configs[name].configured_tables)
            for name in sorted(self.discovery)
            if target in (None, name) and name in results and name in configs
        ]

    def ready(self) -> dict[str, bool]:
        """Per target: has at least one check succeeded?"""
        snapshot = self.store.current
        return {
            name: any(r.last_success_at is not None for (t, _, _), r in snapshot.results.items() if t == name)
            or getattr(snapshot.discoveries.get(name), "last_success_at", None) is not None
            for name in self.targets
        }

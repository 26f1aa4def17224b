"""Per-target phases: a fleet's runs of one check spread over its interval, at the same phase after a restart."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from exporter.app import FIRST_CHECK_SECONDS, STAGGER_SECONDS, Exporter, make_scheduler
from exporter.config import parse_config
from exporter.phase import WITHIN_TARGET_SECONDS, PhasedTrigger, next_on_grid, phase_of
from tests.test_fleet import fleet_config


def at(seconds: float) -> datetime:
    """Unix seconds as an aware datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def test_the_trigger_keeps_its_phase_and_at_least_half_an_interval() -> None:
    trigger = PhasedTrigger(60, 17.5)
    # Steady state: exactly one interval after a run on the grid.
    assert trigger.get_next_fire_time(at(6017.5), at(6017.5)).timestamp() == 6077.5
    # A first run (or one moved to now) off the grid: back on the phase, never sooner than half an interval.
    assert trigger.get_next_fire_time(at(6000), at(6000)).timestamp() == 6077.5  # 6017.5 is only 17.5 s later
    assert trigger.get_next_fire_time(at(6010), at(6010)).timestamp() == 6077.5
    assert trigger.get_next_fire_time(at(5980), at(5980)).timestamp() == 6017.5  # 37.5 s later: >= 30 s
    # No previous run: the next grid point after now.
    assert trigger.get_next_fire_time(None, at(6000)).timestamp() == 6017.5
    assert next_on_grid(6017.5, 60, 17.5) == 6077.5


def test_phase_is_stable_and_inside_the_interval() -> None:
    assert phase_of("db001", "db001/public.chunks/distribution", 60) == phase_of(
        "db001", "db001/public.chunks/distribution", 60
    )
    assert 0 <= phase_of("db001", "x", 60) < 60
    assert 0 <= phase_of("db001", "x", 1) < 1
    # A target's checks stay within a few seconds of one another; two targets are far apart.
    mine = [phase_of("db001", f"db001/public.chunks/{check}", 3600) for check in ("distribution", "insert_probe")]
    assert abs(mine[0] - mine[1]) <= WITHIN_TARGET_SECONDS


@contextmanager
def scheduled(text: str) -> Iterator[Exporter]:
    """An Exporter whose checks are in a paused scheduler: next_run_time set, nothing runs, no SQL."""
    exporter = Exporter(parse_config(text, "<test>"))
    exporter.scheduler = make_scheduler(1)
    exporter.scheduler.start(paused=True)
    try:
        exporter._schedule_discovery(exporter.discovery)
        exporter._schedule(exporter.runners)
        yield exporter
    finally:
        exporter.stop()


def second_runs(exporter: Exporter, check: str) -> dict[str, tuple[float, float]]:
    """Per target: CHECK's first run time and the one after it, in Unix seconds, from the scheduler."""
    runs = {}
    for job in exporter.scheduler.get_jobs():
        target, _, name = job.id.split("/")
        if name == check:
            first = job.next_run_time
            runs[target] = (first.timestamp(), job.trigger.get_next_fire_time(first, first).timestamp())
    return runs


def test_a_fleets_runs_of_one_check_spread_over_the_interval(dsn: str) -> None:
    """200 targets, distribution every minute: first runs within seconds, later runs spread over the minute."""
    with scheduled(fleet_config(dsn, 200)) as exporter:
        runs = second_runs(exporter, "distribution")
    assert len(runs) == 200
    per_target = len(exporter.runners) // 200
    bound = 1.0 + FIRST_CHECK_SECONDS + (per_target - 1) * STAGGER_SECONDS
    firsts = [first for first, _ in runs.values()]
    assert max(firsts) - min(firsts) <= bound  # from one `now`: no wall clock in this bound
    phases = [second % 60 for _, second in runs.values()]
    for first, second in runs.values():
        assert 30 <= second - first <= 90  # the second run is on the phase, half an interval to 1.5 after
    # Spread: every 5-second slice of the minute has some targets' runs and none has more than twice its share
    # (before, all 200 ran in the same ~3 s of every minute). The names are fixed, so this is deterministic.
    slices = Counter(int(phase // 5) for phase in phases)
    assert sorted(slices) == list(range(12))
    assert max(slices.values()) <= 2 * 200 / 12


def test_phases_are_the_same_after_a_restart_and_a_reload(dsn: str) -> None:
    """The phase comes from the target's name: a restart, or a reload that adds targets, keeps every target's."""
    with scheduled(fleet_config(dsn, 20)) as exporter:
        before = {target: second % 60 for target, (_, second) in second_runs(exporter, "distribution").items()}
    with scheduled(fleet_config(dsn, 20)) as restarted:
        after = {target: second % 60 for target, (_, second) in second_runs(restarted, "distribution").items()}
        assert restarted.reconfigure(parse_config(fleet_config(dsn, 30), "<test>"))
        reloaded = {target: second % 60 for target, (_, second) in second_runs(restarted, "distribution").items()}
    assert after.keys() == before.keys() and len(before) == 20
    assert all(abs(after[name] - before[name]) < 1e-6 for name in before)
    assert len(reloaded) == 30
    assert all(abs(reloaded[name] - before[name]) < 1e-6 for name in before)


def test_discovery_runs_are_phased_per_target(dsn: str) -> None:
    """tables: auto targets: discovery's later runs spread over the implementation interval too."""
    entries = "".join(f'\n  - name: auto{index:02d}\n    dsn: "{dsn}"\n    tables: auto\n' for index in range(40))
    with scheduled(f"targets:{entries}") as exporter:
        jobs = {job.id: job for job in exporter.scheduler.get_jobs()}
    assert len(jobs) == 40
    phases = set()
    for job_id, job in jobs.items():
        first = job.next_run_time
        second = job.trigger.get_next_fire_time(first, first).timestamp()
        assert abs(second % 300 - phase_of(job_id.split("/")[0], job_id, 300)) < 1e-3
        phases.add(int(second % 300 // 30))
    assert len(phases) >= 8  # 40 targets over ten 30-second slices of the 5-minute interval

"""The daemon's garbage-collector freezes: at start, after the first round of checks, thawed on reload and stop."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from exporter.gc_freeze import FIRST_ROUND_LIMIT_SECONDS, Freezer

RUNNERS = [("t1", "public.chunks", "implementation"), ("t1", "public.chunks", "distribution")]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def thawed() -> Iterator[None]:
    """Whatever a test froze is given back to the collector, also when it fails."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_freezes_at_start_and_again_once_every_check_has_a_result(thawed: None) -> None:
    freezer = Freezer(Clock())
    freezer.started()
    at_start = gc.get_freeze_count()
    assert at_start > 0
    # One check without a result: no second freeze, however many polls.
    for _ in range(3):
        assert freezer.poll(RUNNERS, {RUNNERS[0]: "result"}) is False
    assert gc.get_freeze_count() == at_start
    later = [[n] for n in range(1000)]  # built during the first round (lists are tracked)
    assert freezer.poll(RUNNERS, dict.fromkeys(RUNNERS, "result")) is True
    assert gc.get_freeze_count() >= at_start + len(later)
    # Once only, until a thaw; after it, the next finished round freezes again.
    assert freezer.poll(RUNNERS, dict.fromkeys(RUNNERS, "result")) is False
    freezer.thaw()
    assert gc.get_freeze_count() == 0
    assert freezer.poll(RUNNERS, dict.fromkeys(RUNNERS, "result")) is True
    assert gc.get_freeze_count() > 0


def test_a_check_that_never_reports_delays_the_second_freeze_to_the_limit(thawed: None) -> None:
    clock = Clock()
    freezer = Freezer(clock)
    freezer.started()
    gc.unfreeze()  # only the second freeze is watched here
    clock.now += FIRST_ROUND_LIMIT_SECONDS - 1
    assert freezer.poll(RUNNERS, {}) is False and gc.get_freeze_count() == 0
    clock.now += 1
    assert freezer.poll(RUNNERS, {}) is True and gc.get_freeze_count() > 0


def test_no_checks_yet_is_not_a_finished_round(thawed: None) -> None:
    """tables: auto: before the first discovery there are no runners, which must not count as all of them done."""
    clock = Clock()
    freezer = Freezer(clock)
    freezer.started()
    gc.unfreeze()
    assert freezer.poll([], {}) is False and gc.get_freeze_count() == 0
    clock.now += FIRST_ROUND_LIMIT_SECONDS
    assert freezer.poll([], {}) is True


def test_a_frozen_cycle_is_collected_after_the_thaw(thawed: None) -> None:
    """What a reload drops (cycles among frozen objects) is freed once thawed, not kept for the process's life."""

    class Node:
        partner: object = None

    first, second = Node(), Node()
    first.partner, second.partner = second, first
    alive = weakref.ref(first)
    freezer = Freezer(Clock())
    freezer.started()
    del first, second
    gc.collect()
    assert alive() is not None  # frozen: no pass visits the cycle
    freezer.thaw()
    gc.collect()
    assert alive() is None

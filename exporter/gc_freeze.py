"""Keep the objects that live as long as the daemon out of the cyclic garbage collector's full passes.

A full (generation 2) collection visits every object the collector tracks. At 200 targets most of them are there
from the start (modules, configuration, check runners and jobs) or from the first round of checks (plan caches,
connections, the first results), and such passes held the interpreter for hundreds of milliseconds in the first
minute after a start. gc.freeze() moves every object tracked at that moment to a permanent generation no pass
visits. Frozen objects are still freed by reference counting; only a cycle among them waits for unfreeze(), so a
reload or a stop thaws everything (what the old configuration held is then collected) and the next first round
freezes again.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

log = logging.getLogger(__name__)

# The second freeze waits for every check's first result, or this long when some check never reports.
FIRST_ROUND_LIMIT_SECONDS = 120.0


def freeze() -> int:
    """Collect what is garbage now, then freeze every object left; returns how many are frozen in all."""
    gc.collect()  # garbage frozen now would stay until a thaw
    gc.freeze()
    return gc.get_freeze_count()


class Freezer:
    """Freezes at start and once the first round of checks is done; thaws on a reload and at stop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since = clock()
        self._settled = False

    def started(self) -> None:
        """The process's long-lived objects are built: freeze them, and wait for the first round."""
        log.debug("garbage collector: %d objects frozen at start", freeze())
        self._since, self._settled = self._clock(), False

    def poll(self, runners: Collection[Any], results: Mapping[Any, Any]) -> bool:
        """Freeze again once every check (RUNNERS' keys) has a result, or after the limit; True when it froze."""
        if self._settled:
            return False
        done = bool(runners) and all(key in results for key in runners)
        if not done and self._clock() - self._since < FIRST_ROUND_LIMIT_SECONDS:
            return False
        self._settled = True
        log.debug("garbage collector: %d objects frozen after the first round of checks", freeze())
        return True

    def thaw(self) -> None:
        """Give every frozen object back to the collector (a reload, a stop); the next first round freezes again."""
        gc.unfreeze()
        self._since, self._settled = self._clock(), False

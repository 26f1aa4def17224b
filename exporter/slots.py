"""A global cap on open connections (max_connections) with a first-come, first-served queue."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

WAIT_SECONDS = 120.0  # a check that waited this long for a slot gives up for this run (the next run queues again)
RECLAIM_POLL_SECONDS = 0.05  # how often the head of the queue asks idle holders to give their slot back


class SlotTimeoutError(Exception):
    """No connection slot came free in time."""


class ConnectionSlots:
    """Who may hold an open connection now: at most `cap` targets, the others queue in arrival order.

    A holder keeps its connection while nobody waits (one connection per target, as without a cap). When someone
    waits, a holder gives its slot back after its check, and the head of the queue reclaims slots from idle
    holders at once, so no target waits for another's next scheduled run, and none starves.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._holders: dict[str, Callable[[], bool]] = {}
        self.max_held = 0  # high-water mark, for tests and the benchmark
        self.granted = 0

    def waiting(self) -> bool:
        """Does anyone wait for a slot?"""
        return bool(self._queue)

    def holds(self, name: str) -> bool:
        """Does this target hold a slot?"""
        return name in self._holders

    def try_acquire(self, name: str, give_back: Callable[[], bool]) -> bool:
        """Take a free slot without waiting and without jumping the queue."""
        with self._cond:
            if name in self._holders:
                return True
            if self._queue or len(self._holders) >= self.cap:
                return False
            self._grant(name, give_back)
            return True

    def acquire(self, name: str, give_back: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
        """Wait for a slot in arrival order; give_back() is how others ask this holder to return it when idle."""
        ticket = object()
        deadline = time.monotonic() + timeout
        with self._cond:
            if name in self._holders:
                return
            self._queue.append(ticket)
        try:
            while True:
                with self._cond:
                    first = self._queue[0] is ticket
                    if first and len(self._holders) < self.cap:
                        self._queue.popleft()
                        self._grant(name, give_back)
                        self._cond.notify_all()
                        return
                    idle = list(self._holders.values()) if first else []
                # Outside the lock: giving back takes the holder's own lock (never waiting for it) and releases.
                if not any(ask() for ask in idle):
                    with self._cond:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise SlotTimeoutError(
                                f"no connection slot came free within {timeout:g}s (max_connections={self.cap})"
                            )
                        self._cond.wait(min(RECLAIM_POLL_SECONDS, remaining))
        except BaseException:
            with self._cond:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._cond.notify_all()
            raise

    def release(self, name: str) -> None:
        """Give a slot back (the connection is closed)."""
        with self._cond:
            if self._holders.pop(name, None) is not None:
                self._cond.notify_all()

    def _grant(self, name: str, give_back: Callable[[], bool]) -> None:
        """Record a holder (the condition's lock is held)."""
        self._holders[name] = give_back
        self.granted += 1
        self.max_held = max(self.max_held, len(self._holders))

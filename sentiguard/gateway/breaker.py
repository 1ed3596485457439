"""A circuit breaker per primary worker.

States (`BreakerState`):

- `closed`: requests flow. A connection failure opens it at once (the worker is gone,
  every further attempt would fail the same way); `TIMEOUT_FAILURES` timeouts or errors
  in a row open it too, so a hung worker stops costing every request its full deadline.
- `open`: `allow()` says no without touching the network, so an open breaker costs a
  request nothing. After `open_s` the next `allow()` turns it `half_open`.
- `half_open`: exactly one probe request is let through; its success closes the breaker,
  its failure opens it again for another `open_s`.

The watchdog can force it open (`trip`) when it reports a dead or parked worker, and the
readiness poller resets it (`reset`) when a new process (new pid) passes `/ready`.
Thread-safe: every method takes the breaker's own lock and none blocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

# A single slow answer can be load, not a fault; three in a row is a pattern.
TIMEOUT_FAILURES = 3


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """Circuit breaker for one worker. `clock` is injectable for tests."""

    def __init__(self, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_s = open_s
        self.clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._failures = 0
        self._probe_in_flight = False
        self.reason: str | None = None

    @property
    def state(self) -> BreakerState:
        """The state as a request would see it now (open turns half-open once `open_s` passed)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._cooled_down():
                return BreakerState.HALF_OPEN
            return self._state

    def _cooled_down(self) -> bool:
        return self.clock() - self._opened_at >= self.open_s

    def would_allow(self) -> bool:
        """Whether `allow()` would let a request through now, without claiming a probe slot."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._probe_in_flight:
                return False
            return self._state is BreakerState.HALF_OPEN or self._cooled_down()

    def allow(self) -> bool:
        """Claim the right to send one request. True: send it and report the outcome."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._probe_in_flight:
                return False
            if self._state is BreakerState.OPEN and not self._cooled_down():
                return False
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = True
            return True

    def success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probe_in_flight = False
            self.reason = None

    def failure(self, reason: str, *, connection: bool = False) -> None:
        """Record a failed request; `connection=True` (refused, reset) opens at once."""
        with self._lock:
            self._failures += 1
            was_probe = self._probe_in_flight
            self._probe_in_flight = False
            if connection or was_probe or self._failures >= TIMEOUT_FAILURES:
                self._open(reason)

    def release(self) -> None:
        """Give back a probe slot claimed by `allow()` when no request was sent after all."""
        with self._lock:
            self._probe_in_flight = False

    def trip(self, reason: str) -> None:
        """Open now, whatever the state: the watchdog reported the worker dead or parked."""
        with self._lock:
            self._probe_in_flight = False
            self._open(reason)

    def reset(self) -> None:
        """Close: a new worker process passed its readiness check."""
        self.success()

    def _open(self, reason: str) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self.clock()
        self.reason = reason

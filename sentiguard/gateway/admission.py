"""Admission to the in-process fallback: a bounded number of requests at once, never a queue.

The fallback is the last line: when `gateway.fallback_capacity` requests already use it,
the next is shed at once with 503 + Retry-After (`Overloaded`) instead of waiting, so an
overload shows up as fast, explicit refusals rather than as latency for everyone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sentiguard.errors import Overloaded


class FallbackAdmission:
    """A non-blocking semaphore with a readable `in_use` count."""

    def __init__(self, capacity: int, retry_after_s: int) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self.in_use = 0
        self.shed_total = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one fallback slot for the block, or raise `Overloaded` (503) right away."""
        with self._lock:
            if self.in_use >= self.capacity:
                self.shed_total += 1
                raise Overloaded(
                    f"the service is at capacity ({self.capacity} requests are already "
                    f"answered by the fallback). Retry after {self.retry_after_s} s, or "
                    f"send fewer requests at once.",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self.in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_use -= 1

"""What a worker's batch lanes have done, for liveness by progress (GET /live).

The watchdog calls a worker hung when it has work and finishes no batch for a window
scaled to its measured batch time, not when a probe waits behind a long batch. So the
lanes record, cheaply and under a lock they never hold during a forward pass, when each
batch started and finished; the HTTP thread answering /live reads a snapshot without
going through the batcher, and answers in milliseconds however long a batch runs.

Numbers are in named units (`*_ms`); None means "not seen yet" (no batch finished, none
running), never 0, so a reader cannot mistake "no data" for "fast".
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Any

# Weight of the newest batch in the `batch_ms` moving average: about the last ten
# batches count, so a model that slows down (a longer review mix, a noisy neighbour)
# shows within seconds, and one odd batch does not swing it.
EWMA_WEIGHT = 0.2
# `batch_ms_max` covers this many recent batches: long enough to hold the full-load batch
# of the start-up memory measure for a while, short enough to forget a past burst.
RECENT_BATCHES = 64


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


class Progress:
    """Batch counters shared by the lanes (writers) and the HTTP threads (readers).

    A lane calls `started()` before a forward pass and `finished(token, texts)` after it,
    whether the pass returned or raised: either way the lane moved on, which is what
    liveness asks (a wrong answer is the known-answer probe's to catch). `dropped()`
    counts a request skipped unrun (deadline passed, or its caller stopped waiting).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._running: dict[int, float] = {}  # token -> monotonic start
        self._recent: deque[float] = deque(maxlen=RECENT_BATCHES)
        self._ewma_s: float | None = None
        self._last_finished: float | None = None
        self.batches = 0
        self.texts = 0
        self.dropped_requests = 0

    def started(self) -> int:
        """Record a batch starting now; the token goes to `finished`."""
        with self._lock:
            token = next(self._tokens)
            self._running[token] = time.monotonic()
            return token

    def finished(self, token: int, texts: int) -> None:
        now = time.monotonic()
        with self._lock:
            took = now - self._running.pop(token, now)
            self.batches += 1
            self.texts += texts
            self._recent.append(took)
            self._ewma_s = (
                took
                if self._ewma_s is None
                else EWMA_WEIGHT * took + (1 - EWMA_WEIGHT) * self._ewma_s
            )
            self._last_finished = now

    def dropped(self, requests: int = 1) -> None:
        with self._lock:
            self.dropped_requests += requests

    def snapshot(self, queued: int) -> dict[str, Any]:
        """The `progress` object of /live and /health; `queued` comes from the batcher."""
        now = time.monotonic()
        with self._lock:
            oldest = min(self._running.values(), default=None)
            return {
                "batches": self.batches,
                "texts": self.texts,
                "queued": queued,
                "running": len(self._running),
                "oldest_running_ms": None if oldest is None else _ms(now - oldest),
                "last_batch_ago_ms": (
                    None if self._last_finished is None else _ms(now - self._last_finished)
                ),
                "batch_ms": None if self._ewma_s is None else _ms(self._ewma_s),
                "batch_ms_max": _ms(max(self._recent)) if self._recent else None,
                "dropped": self.dropped_requests,
            }

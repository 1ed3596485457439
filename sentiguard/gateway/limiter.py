"""Admission by measured capacity: an adaptive concurrency limit per worker.

Each gateway process keeps one `Limiter` per worker. The router reports every answer (its
latency, the requests in flight when it was sent, and whether it was a drop: a timeout on
the gateway's own deadline). The limiter turns these into `limit`, the requests this process
may have outstanding on the worker now, between 1 and `ceiling` (this process's share of
`gateway.max_in_flight_per_worker`), and into `expected_latency_s()`, a low percentile of
the recent answers' latency: a request with less time left than that would only queue and
time out, so the router answers it from the fallback at once (`overloaded`).

Three policies (`gateway.admission`), after Netflix's concurrency-limits and Envoy's
adaptive concurrency filter:

- `aimd` (`AimdLimiter`, Netflix `AIMDLimit`): +1 for an answer within the latency target
  while the limit is in use, x0.9 for a drop or an answer slower than the target (at most
  once per target latency, as TCP backs off once per round trip). The target is a share of
  the gateway's deadline: what matters to a client is missing its deadline, not a latency
  rising while still far inside it.
- `gradient` (`GradientLimiter`, Netflix `Gradient2Limit`): the limit follows the ratio of
  the long-run latency (an exponential average) to the latest one, so it shrinks as soon as
  latency climbs above `tolerance` x its usual value and grows while it does not.
- `fixed` (`FixedLimiter`): always the ceiling (the behaviour before adaptive admission),
  still measuring latency for the deadline check.

Micro-batching (`sentiguard/primary/batcher.py`) makes a worker's latency nearly flat as
concurrency rises up to its batch size, then grow with it; a pure latency gradient reads
that growth as queueing and keeps the limit low although bigger batches serve more per
second. bench/admission.py measures the policies side by side; the default follows it.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]

# The expected latency is this percentile of the answers of the last `WINDOW_S` seconds
# (at most `WINDOW_SAMPLES`): low, so only a request that would miss its deadline even if
# it were served as fast as the recent fast ones is sent to the fallback at once; recent,
# so a worker that got faster (or a new process) is not judged by old answers.
EXPECTED_PERCENTILE = 0.10
WINDOW_S = 10.0
WINDOW_SAMPLES = 64


class LatencyWindow:
    """The latencies of the recent answers, for `expected()` (not thread-safe alone)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=WINDOW_SAMPLES)

    def add(self, latency_s: float) -> None:
        self._samples.append((self.clock(), latency_s))

    def expected(self) -> float | None:
        """The `EXPECTED_PERCENTILE` of the window's latencies; None when it is empty."""
        horizon = self.clock() - WINDOW_S
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        if not self._samples:
            return None
        ordered = sorted(latency for _, latency in self._samples)
        return ordered[int(EXPECTED_PERCENTILE * (len(ordered) - 1))]

    def clear(self) -> None:
        self._samples.clear()


class Limiter(ABC):
    """A worker's concurrency limit, learnt from the answers; thread-safe.

    Callers: `WorkerPool.acquire` reads `limit` and `expected_latency_s()`; the router calls
    `sample` once per request sent (`dropped` for a timeout on the gateway's own deadline;
    errors and client-shortened timeouts are not capacity signals and are not reported).
    """

    name = "limiter"

    def __init__(self, ceiling: int, initial: int | None = None, clock: Clock = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._ceiling = max(1, ceiling)
        self._initial = initial
        self._limit = float(self._start())
        self._window = LatencyWindow(clock)

    def _start(self) -> int:
        return self._ceiling if self._initial is None else min(self._ceiling, max(1, self._initial))

    @property
    def limit(self) -> int:
        with self._lock:
            return self._clamped()

    @property
    def ceiling(self) -> int:
        return self._ceiling

    @ceiling.setter
    def ceiling(self, value: int) -> None:
        """A new ceiling (this process's share, set once it knows its siblings)."""
        with self._lock:
            self._ceiling = max(1, value)
            self._limit = min(self._limit, float(self._ceiling))

    def _clamped(self) -> int:
        return max(1, min(self._ceiling, int(self._limit)))

    def expected_latency_s(self) -> float | None:
        with self._lock:
            return self._window.expected()

    def sample(self, latency_s: float, in_flight: int, *, dropped: bool = False) -> None:
        """One answer (or drop): `in_flight` is the worker's count when it was sent."""
        with self._lock:
            if not dropped:
                self._window.add(latency_s)
            updated = self._update(latency_s, in_flight, dropped)
            self._limit = max(1.0, min(float(self._ceiling), updated))

    def reset(self) -> None:
        """Forget what was learnt: a new worker process (maybe another model) took over."""
        with self._lock:
            self._window.clear()
            self._limit = float(self._start())
            self._reset()

    @abstractmethod
    def _update(self, latency_s: float, in_flight: int, dropped: bool) -> float:
        """The new (unclamped) limit after one sample; called under the lock."""

    def _reset(self) -> None:  # noqa: B027 (a hook: most policies keep nothing else)
        """Drop policy state beyond the limit and the window (under the lock)."""


class FixedLimiter(Limiter):
    """Always the ceiling: admission as it was before it adapted."""

    name = "fixed"

    def _update(self, latency_s: float, in_flight: int, dropped: bool) -> float:
        return float(self._ceiling)


class AimdLimiter(Limiter):
    """Additive increase while answers come within `target_s`, multiplicative decrease on a
    drop or a slower answer (Netflix `AIMDLimit`, with a latency target from the deadline)."""

    name = "aimd"
    BACKOFF = 0.9

    def __init__(
        self,
        ceiling: int,
        target_s: float,
        initial: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(ceiling, initial, clock)
        self.target_s = target_s
        self._backed_off_at = -math.inf

    def _update(self, latency_s: float, in_flight: int, dropped: bool) -> float:
        if dropped or latency_s > self.target_s:
            now = self.clock()
            # The answers of one slow spell arrive together; backing off for each would
            # collapse the limit for what is one signal.
            if now - self._backed_off_at < self.target_s:
                return self._limit
            self._backed_off_at = now
            return self._limit * self.BACKOFF
        if in_flight * 2 >= self._limit:  # grow only while the limit is what holds us back
            return self._limit + 1.0
        return self._limit

    def _reset(self) -> None:
        self._backed_off_at = -math.inf


class GradientLimiter(Limiter):
    """Netflix `Gradient2Limit`: limit x clamp(tolerance x long-run / latest latency, 0.5, 1)
    plus a queue allowance of sqrt(limit) while within tolerance, smoothed. A drop counts
    as the steepest gradient (Gradient2 ignores drops; a timeout is the clearest sign of
    too much concurrency)."""

    name = "gradient"
    TOLERANCE = 1.5
    SMOOTHING = 0.2
    LONG_WINDOW = 100  # samples in the long-run exponential average (Netflix: 600)

    def __init__(self, ceiling: int, initial: int | None = None, clock: Clock = time.monotonic):
        super().__init__(ceiling, initial, clock)
        self._long_s: float | None = None

    def _update(self, latency_s: float, in_flight: int, dropped: bool) -> float:
        limit = self._limit
        short = max(latency_s, 1e-6)
        if self._long_s is None:
            self._long_s = short
        elif not dropped:
            alpha = 2.0 / (self.LONG_WINDOW + 1)
            self._long_s += alpha * (short - self._long_s)
        long = self._long_s
        if long / short > 2:
            # Latency came back down after a long busy spell: let the average follow faster.
            self._long_s = long * 0.95
        if not dropped and in_flight < limit / 2:
            return limit  # not using the limit: the latency says nothing about it
        gradient = 0.5 if dropped else max(0.5, min(1.0, self.TOLERANCE * long / short))
        # Netflix adds the queue allowance whatever the gradient; with limits of a few
        # requests (not its minimum of 20) that pins the limit at 4 however slow the
        # worker gets, so here it is allowed only while latency is within the tolerance.
        queue = math.sqrt(limit) if gradient >= 1.0 else 0.0
        target = limit * gradient + queue
        return limit * (1 - self.SMOOTHING) + target * self.SMOOTHING

    def _reset(self) -> None:
        self._long_s = None


POLICIES = ("aimd", "gradient", "fixed")


def make_limiter(
    policy: str, ceiling: int, deadline_s: float, clock: Clock = time.monotonic
) -> Limiter:
    """The limiter `gateway.admission` names, for a worker with this process's `ceiling`."""
    if policy == "aimd":
        return AimdLimiter(ceiling, target_s=AIMD_TARGET_SHARE * deadline_s, clock=clock)
    if policy == "gradient":
        return GradientLimiter(ceiling, clock=clock)
    if policy == "fixed":
        return FixedLimiter(ceiling, clock=clock)
    raise ValueError(f"unknown admission policy {policy!r}; use one of {', '.join(POLICIES)}")


# AIMD's latency target: half the deadline leaves the other half for a request that waits
# behind a batch in progress, so what is admitted still finishes in time.
AIMD_TARGET_SHARE = 0.5

"""The operations page's data: the last minutes of the gateway, sampled once a second.

`OpsHistory` keeps, in a ring buffer of `POINTS` samples (`WINDOW_S` at `INTERVAL_S`),
per worker its memory (RSS, USS), requests in flight, breaker open and ready; and for the
whole service the answers per second by model and fallback reason, and the requests shed
per second. `body()` is the `GET /ops/data` document: that history as columns (what
uPlot draws), the workers as /status shows them with their limits, and the watchdog's
decisions grouped into incidents (`incidents.py`).

Why a sampling thread rather than sampling when the page asks: the page is opened after
something went wrong, and must show the minutes before it was opened; a lazy sampler
would hold nothing then. The thread does one bounded pass a second (a pool snapshot and
two counter reads, tens of microseconds) and waits on its stop flag in between, so
`stop()` ends it at once. Rates come from the counters /metrics already keeps
(`Metrics.answered_counts`, `shed_count`), divided by the monotonic time between samples,
so a late pass (a busy interpreter) gives a wider interval, not a wrong rate.

Memory bound: `POINTS` samples of 1 time + `len(ANSWER_SERIES)` rates + 1 shed rate +
`len(WORKER_FIELDS)` values a worker: 600 x (7 + 5 W) numbers, 10,200 for 2 workers
(~0.5 MB as Python objects), whatever the traffic and however long the gateway runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from sentiguard.gateway.incidents import group
from sentiguard.gateway.metrics import Metrics
from sentiguard.gateway.state import GatewayState
from sentiguard.gateway.workers import Reason

WINDOW_S = 600  # the last ten minutes
INTERVAL_S = 1.0
POINTS = int(WINDOW_S / INTERVAL_S)
# Answers by who gave them: the primary, or the fallback and why (the /metrics labels).
ANSWER_SERIES: tuple[tuple[str, str], ...] = (
    ("primary", "none"),
    *(("fallback", str(r)) for r in Reason),
)
WORKER_FIELDS = ("rss_mb", "uss_mb", "in_flight", "breaker_open", "ready")

T = TypeVar("T")


class Ring(Generic[T]):
    """A fixed-capacity buffer: appending to a full one drops the oldest item. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a ring holds at least one item, not {capacity}")
        self.capacity = capacity
        self._items: deque[T] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def append(self, item: T) -> None:
        with self._lock:
            self._items.append(item)

    def items(self) -> list[T]:
        """Oldest first."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class WorkerPoint(NamedTuple):
    rss_mb: float | None
    uss_mb: float | None
    in_flight: int
    breaker_open: bool
    ready: bool


class Sample(NamedTuple):
    t: float  # wall-clock seconds (the charts' time axis)
    answers: tuple[float | None, ...]  # per second, in ANSWER_SERIES order
    shed: float | None  # per second
    workers: tuple[WorkerPoint, ...]  # in pool order


class OpsHistory:
    """Samples the gateway's state into a `Ring` and builds the /ops/data body."""

    def __init__(
        self,
        state: GatewayState,
        metrics: Metrics,
        memory_limit_mb: float | str | None,
        points: int = POINTS,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.metrics = metrics
        # watchdog.memory_limit_mb as configured: a number, or "auto" (known per worker
        # only once the watchdog reports it).
        self.memory_limit_mb = _number(memory_limit_mb)
        self.interval_s = interval_s
        self.ring: Ring[Sample] = Ring(points)
        self.clock = clock
        self.wall = wall
        self._last: tuple[float, tuple[float, ...], float] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- sampling ---------------------------------------------------------------------

    def sample(self) -> Sample:
        """Take one sample now and keep it (the thread calls this; tests call it directly)."""
        now = self.clock()
        counts = self.metrics.answered_counts()
        answered = tuple(counts.get(key, 0.0) for key in ANSWER_SERIES)
        shed = self.metrics.shed_count()
        rates: tuple[float | None, ...] = (None,) * len(ANSWER_SERIES)
        shed_rate: float | None = None
        if self._last is not None:
            then, answered_then, shed_then = self._last
            dt = max(now - then, 1e-3)
            rates = tuple(
                round((a - b) / dt, 2) for a, b in zip(answered, answered_then, strict=True)
            )
            shed_rate = round((shed - shed_then) / dt, 2)
        self._last = (now, answered, shed)
        workers = tuple(
            WorkerPoint(
                w["rss_mb"],
                w["uss_mb"],
                int(w["in_flight"]),
                w["breaker"] != "closed",
                bool(w["ready"]) and not w["drain"],
            )
            for w in self.state.pool.snapshot()
        )
        point = Sample(round(self.wall(), 3), rates, shed_rate, workers)
        self.ring.append(point)
        return point

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ops-history", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        self.sample()  # the baseline of the first rates
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a bad pass must not end the history for good
                continue

    # --- the /ops/data body -----------------------------------------------------------

    def series(self) -> dict[str, Any]:
        """The history as columns, oldest first: what the page's charts draw."""
        samples = self.ring.items()
        names = [w.name for w in self.state.pool.workers]
        return {
            "t": [s.t for s in samples],
            "answers": {
                (model if model == "primary" else f"{model}:{reason}"): [
                    s.answers[i] for s in samples
                ]
                for i, (model, reason) in enumerate(ANSWER_SERIES)
            },
            "shed": [s.shed for s in samples],
            "workers": {
                name: {f: [_column(s, i, f) for s in samples] for f in WORKER_FIELDS}
                for i, name in enumerate(names)
            },
        }

    def limit_mb(self, workers: list[dict[str, Any]] | None = None) -> float | None:
        """The memory limit the chart draws: the watchdog's (its summary), else the largest
        of the workers' own (`watchdog.memory_limit_mb = "auto"` derives one per worker
        from its measured peak), else the configured number; None while an auto limit
        waits for the workers' measures."""
        reported = self.state.watchdog.body.get("limits", {})
        value = _number(reported.get("memory_limit_mb")) if isinstance(reported, dict) else None
        if value is not None:
            return value
        own = [mb for w in workers or [] if (mb := _number(w.get("memory_limit_mb"))) is not None]
        return max(own) if own else self.memory_limit_mb

    def body(self) -> dict[str, Any]:
        status = self.state.status()
        limit = self.limit_mb(status["workers"])
        capacity = self.state.pool.max_in_flight
        workers = [
            # Each worker's own capacity and memory limit, from /status (the watchdog's
            # report), once known; until then the shared ones.
            {"capacity": capacity, "memory_limit_mb": limit, **w}
            for w in status["workers"]
        ]
        watchdog = status["watchdog"]
        incidents = group(self.state.decisions.items())
        return {
            "now": round(self.wall(), 3),
            "gateway_pid": os.getpid(),
            "window_s": round(self.ring.capacity * self.interval_s),
            "interval_s": self.interval_s,
            "memory_limit_mb": limit,
            "capacity_per_worker": capacity,
            "series": self.series(),
            "workers": workers,
            "fallback": status["fallback"],
            "watchdog": {k: v for k, v in watchdog.items() if k != "decisions"},
            # What `up` keeps (gateway processes, watchdog): None when not run under `up`.
            "programs": status["programs"],
            # Newest first: the page shows the latest at the top.
            "incidents": [i.to_json() for i in reversed(incidents)],
        }


def _number(value: Any) -> float | None:
    """`value` as a float when it is a number (not a bool), else None."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _column(sample: Sample, index: int, name: str) -> Any:
    if index >= len(sample.workers):
        return None
    value = getattr(sample.workers[index], name)
    return int(value) if isinstance(value, bool) else value

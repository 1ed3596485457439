"""What the gateway knows about each primary worker, and which one gets the next request.

A `Worker` is `primary_I` on `127.0.0.1:(primary.base_port + I)` (`runtime.endpoints`).
Three sources update it, none of them on a request's path:

- the readiness poller (`readiness.py`): `ready`, `pid`, `model_version`, `precision`
  (what the worker's primary.precision chose, with its measured rates and drift), memory;
- the watchdog, through the control socket (`apply_report`): `drain`, its view of the
  state, memory, restarts by cause, `parked`;
- the router: `in_flight` and the breaker's outcomes.

`WorkerPool.acquire(time_left_s)` picks, under one lock, the usable worker (ready, not
drained, breaker allowing) with the fewest outstanding requests, room below its learnt
limit (`limiter.py`; `max_in_flight_per_worker` is the ceiling) and an expected latency
within the time left, and counts the request against it; `release()` gives it back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sentiguard.gateway.breaker import Breaker
from sentiguard.gateway.limiter import Limiter, make_limiter
from sentiguard.runtime import endpoints
from sentiguard.settings import Settings

# Reported states (supervisord's, and the watchdog's phases) that mean no process serves.
# The watchdog's "down" is not one: it means supervisord did not answer, not that the
# worker is gone, and the readiness poller knows better then.
DEAD_STATES = frozenset({"STOPPED", "STOPPING", "EXITED", "FATAL", "BACKOFF", "PARKED"})


class Reason(StrEnum):
    """Why the fallback answered: the `reason` field of an answer."""

    PRIMARY_DOWN = "primary_down"
    OVERLOADED = "overloaded"
    PRIMARY_TIMEOUT = "primary_timeout"
    PRIMARY_ERROR = "primary_error"


@dataclass
class Worker:
    index: int
    port: int
    breaker: Breaker
    limiter: Limiter
    in_flight: int = 0
    # From the readiness poller.
    ready: bool = False
    pid: int | None = None
    model_version: str | None = None
    precision: dict[str, Any] | None = None
    not_ready_reason: str | None = "not polled yet"
    rss_mb: float | None = None
    uss_mb: float | None = None
    # From the watchdog.
    drain: bool = False
    reported_state: str | None = None
    reported_reason: str | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    parked: bool = False
    report_at: float | None = None
    memory_limit_mb: float | None = None
    memory_limit_source: str | None = None

    @property
    def name(self) -> str:
        return endpoints.worker_name(self.index)

    @property
    def state(self) -> str:
        """One word for an operator: the watchdog's state when it has one, else our own view."""
        reported = self.reported_state.lower() if self.reported_state else None
        if self.parked:
            return "parked"
        if self.drain:
            # The watchdog names why ("recycling", "reloading").
            return reported if reported and reported != "ready" else "draining"
        if reported and reported.upper() in DEAD_STATES:
            return reported
        if self.ready:
            return "ready"
        if reported in ("starting", "recycling", "reloading"):
            return reported
        return "loading" if self.not_ready_reason == "loading" else "down"

    def usable(self) -> bool:
        return self.ready and not self.drain and not self.parked and self.breaker.would_allow()


class WorkerPool:
    """The workers and the lock that keeps `in_flight` and the choice of worker consistent."""

    def __init__(self, settings: Settings) -> None:
        gateway = settings.gateway
        self._max_in_flight: int = gateway.max_in_flight_per_worker
        deadline_s = gateway.deadline_ms / 1000.0
        self.workers = [
            Worker(
                index=a.index,
                port=a.port,
                breaker=Breaker(gateway.breaker_open_s),
                limiter=make_limiter(gateway.admission, self._max_in_flight, deadline_s),
            )
            for a in endpoints.workers(settings)
        ]
        self._lock = threading.Lock()
        self._turn = 0

    @property
    def max_in_flight(self) -> int:
        """This process's ceiling per worker (its share of max_in_flight_per_worker)."""
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        self._max_in_flight = value
        for worker in self.workers:
            worker.limiter.ceiling = value

    def by_name(self, name: str) -> Worker | None:
        return next((w for w in self.workers if w.name == name), None)

    def acquire(self, time_left_s: float = float("inf")) -> tuple[Worker | None, Reason | None]:
        """Reserve a slot on the best worker, or say why none: primary_down or overloaded.

        Overloaded: every usable worker is at its limit, or would answer later than
        `time_left_s` even as fast as its recent fast answers (it would queue and time out).
        """
        with self._lock:
            usable = [w for w in self.workers if w.usable()]
            if not usable:
                return None, Reason.PRIMARY_DOWN
            roomy = [
                w for w in usable if w.in_flight < w.limiter.limit and _in_time(w, time_left_s)
            ]
            if not roomy:
                return None, Reason.OVERLOADED
            # Ties go round-robin so light load spreads over every worker.
            self._turn += 1
            n = len(self.workers)
            roomy.sort(key=lambda w: (w.in_flight, (w.index - self._turn) % n))
            for worker in roomy:
                if worker.breaker.allow():
                    worker.in_flight += 1
                    return worker, None
            return None, Reason.PRIMARY_DOWN

    def release(self, worker: Worker) -> None:
        with self._lock:
            worker.in_flight -= 1

    def in_flight(self) -> int:
        with self._lock:
            return sum(w.in_flight for w in self.workers)

    # --- readiness poller -------------------------------------------------------------

    def mark_ready(
        self,
        worker: Worker,
        pid: int | None,
        model_version: str | None,
        precision: dict[str, Any] | None = None,
    ) -> bool:
        """Record a passed /ready; True when this changed the worker's readiness or pid."""
        with self._lock:
            changed = not worker.ready or pid != worker.pid
            if pid is not None and pid != worker.pid:
                # A new process: whatever the breaker and the limiter learnt about the old
                # one is moot (it may even serve another model, after a reload).
                # (A drain stays until the watchdog lifts it: it owns the recycle.)
                worker.breaker.reset()
                worker.limiter.reset()
                if (worker.reported_state or "").upper() in DEAD_STATES:
                    worker.reported_state = None
                    worker.reported_reason = None
                worker.parked = False
                worker.rss_mb = worker.uss_mb = None
            worker.ready = True
            worker.pid = pid
            worker.model_version = model_version
            worker.precision = precision
            worker.not_ready_reason = None
            return changed

    def mark_not_ready(self, worker: Worker, reason: str) -> bool:
        """Record a failed /ready; True when the worker was ready until now."""
        with self._lock:
            changed = worker.ready
            worker.ready = False
            worker.not_ready_reason = reason
            return changed

    # --- watchdog reports -------------------------------------------------------------

    def apply_report(self, worker: Worker, report: dict[str, Any]) -> dict[str, Any]:
        """Apply a watchdog PUT /control/workers/<name> body; answer name, in_flight, drain."""
        with self._lock:
            # A drain alone does not trip the breaker: it already stops new requests, and a
            # drain lifted without a restart leaves a healthy worker that should not wait
            # out breaker_open_s.
            if "drain" in report:
                worker.drain = bool(report["drain"])
            state = report.get("state")
            was_dead = (worker.reported_state or "").upper() in DEAD_STATES or worker.parked
            if isinstance(state, str):
                worker.reported_state = state
            worker.reported_reason = report.get("reason")
            for key in ("rss_mb", "uss_mb", "memory_limit_mb"):
                if isinstance(report.get(key), int | float):
                    setattr(worker, key, float(report[key]))
            if isinstance(report.get("memory_limit_source"), str):
                worker.memory_limit_source = report["memory_limit_source"]
            restarts = report.get("restarts")
            if isinstance(restarts, dict):
                worker.restarts = {str(k): int(v) for k, v in restarts.items()}
            worker.parked = bool(report.get("parked", False))
            worker.report_at = time.monotonic()
            dead = isinstance(state, str) and state.upper() in DEAD_STATES
            if (dead or worker.parked) and not was_dead:
                # On the transition only: the watchdog repeats its report every round, and
                # the poller, not a repeated report, says when a new process is ready.
                worker.ready = False
                worker.not_ready_reason = worker.reported_reason or state or "parked"
                worker.breaker.trip(f"watchdog reports {state or 'parked'}")
            return {"name": worker.name, "in_flight": worker.in_flight, "drain": worker.drain}

    def snapshot(self) -> list[dict[str, Any]]:
        """The `workers` list of /status (`memory_limit_mb` and its source once reported)."""
        with self._lock:
            return [
                {
                    "name": w.name,
                    "pid": w.pid,
                    "port": w.port,
                    "state": w.state,
                    "ready": w.ready,
                    "rss_mb": w.rss_mb,
                    "uss_mb": w.uss_mb,
                    "restarts": dict(w.restarts),
                    "breaker": str(w.breaker.state),
                    "in_flight": w.in_flight,
                    "capacity": w.limiter.limit,
                    "drain": w.drain,
                    "model_version": w.model_version,
                    "precision": w.precision,
                    "reason": w.reported_reason or w.not_ready_reason or w.breaker.reason,
                    **_memory_limit(w),
                }
                for w in self.workers
            ]

    def any_ready(self) -> bool:
        with self._lock:
            return any(w.ready and not w.drain for w in self.workers)


def _in_time(worker: Worker, time_left_s: float) -> bool:
    """Whether the worker may answer within `time_left_s` (unknown until it answered once)."""
    if time_left_s <= 0:
        return False
    expected = worker.limiter.expected_latency_s()
    return expected is None or expected <= time_left_s


def _memory_limit(worker: Worker) -> dict[str, Any]:
    """The watchdog's memory limit for the worker and how it was derived, once reported
    (absent before, so a reader falls back to the configured limit)."""
    if worker.memory_limit_mb is None:
        return {}
    return {
        "memory_limit_mb": worker.memory_limit_mb,
        "memory_limit_source": worker.memory_limit_source,
    }

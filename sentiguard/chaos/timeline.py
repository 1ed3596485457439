"""What a scenario saw and measured: the /status timeline and the run's counts and timings.

Timings: *detect* is fault -> the gateway stops counting the worker as ready (or, for a
hang, fault -> supervisord runs a new process for it); *recover* is fault -> the worker is
ready again with a new pid.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sentiguard.chaos.load import Sample
from sentiguard.chaos.service import ServiceHandle


@dataclass
class Observation:
    at: float
    workers: dict[str, dict[str, Any]]


class Monitor:
    """Polls /status in the background, keeping a timeline of each worker's pid and ready."""

    def __init__(self, service: ServiceHandle, interval_s: float = 0.1) -> None:
        self.service = service
        self.interval_s = interval_s
        self.timeline: list[Observation] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                workers = {w["name"]: w for w in self.service.get("/status", 2.0).body["workers"]}
                self.timeline.append(Observation(at, workers))
            self._stop.wait(self.interval_s)

    def first(
        self, after: float, name: str, test: Callable[[dict[str, Any]], bool]
    ) -> float | None:
        """Seconds from `after` to the first observation where `test(worker)` holds."""
        for obs in list(self.timeline):
            worker = obs.workers.get(name)
            if obs.at >= after and worker is not None and test(worker):
                return obs.at - after
        return None


@dataclass
class FaultTiming:
    worker: str
    pid: int
    detect_s: float | None
    recover_s: float | None
    replaced_s: float | None = None  # hang: until supervisord ran a new process


@dataclass
class Result:
    """Counts and timings of one scenario run."""

    scenario: str
    duration_s: float
    samples: list[Sample] = field(repr=False, default_factory=list)
    faults: list[FaultTiming] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def statuses(self) -> Counter[int]:
        return Counter(s.status for s in self.samples)

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    @property
    def by_model(self) -> Counter[str]:
        return Counter(f"{s.model}/{s.reason}" for s in self.samples if s.status == 200)

    def latency_quantile(self, q: float, answered_only: bool = True) -> float:
        values = sorted(s.latency_s for s in self.samples if s.status == 200 or not answered_only)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def server_quantile(self, q: float) -> float | None:
        """Quantile of the gateway's own latency_ms over the answered requests."""
        values = sorted(s.server_ms for s in self.samples if s.server_ms is not None)
        return values[min(len(values) - 1, int(q * len(values)))] if values else None

    def answered_over(self, limit_ms: float) -> list[Sample]:
        """Answered requests whose own latency_ms (the gateway's clock) passed `limit_ms`."""
        return [s for s in self.samples if s.server_ms is not None and s.server_ms > limit_ms]

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "duration_s": round(self.duration_s, 1),
            "requests": len(self.samples),
            "statuses": dict(self.statuses),
            "answers": dict(self.by_model),
            "p50_ms": round(self.latency_quantile(0.50) * 1000, 1),
            "p99_ms": round(self.latency_quantile(0.99) * 1000, 1),
            "max_ms": round(max((s.latency_s for s in self.samples), default=0) * 1000, 1),
            "server_p99_ms": self.server_quantile(0.99),
            "faults": [vars(f) for f in self.faults],
            "load_avg_1m": round(os.getloadavg()[0], 1),
            **self.extra,
        }

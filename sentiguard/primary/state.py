"""What a worker's HTTP threads share: the model, its batcher, readiness, faults, in-flight.

`WorkerState` is built before the model loads (the port answers /ready 503 "loading"
meanwhile); `attach(model)` starts batching; the process sets `ready` once the
known-answer probe passed and `draining` on SIGTERM. `secret` is the per-`up` secret the
process read at start (None: it had none, and serves /predict to nobody; see process.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sentiguard.primary import probe as probe_mod
from sentiguard.primary.batcher import Batcher, batch_lanes
from sentiguard.primary.faults import Faults
from sentiguard.runtime import endpoints, memory

if TYPE_CHECKING:
    from sentiguard.primary.inference import Prediction, PrimaryModel
    from sentiguard.settings import Settings

# Longest a /predict waits for its batch; the gateway's own deadline is much shorter.
PREDICT_TIMEOUT_S = 30.0


class WorkerState:
    """Shared by the HTTP threads and the process; `in_flight` counts /predict calls."""

    def __init__(
        self,
        settings: Settings,
        index: int,
        log: Callable[..., None],
        secret: str | None = None,
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.index = index
        self.name = endpoints.worker_name(index)
        self.log = log
        self.faults = Faults(log)
        self.model: PrimaryModel | None = None
        self.batcher: Batcher[Prediction] | None = None
        self.ready = False
        self.draining = False
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def attach(self, model: PrimaryModel) -> None:
        """Start batching for a loaded model (not ready until a probe passed)."""
        self.model = model
        self.batcher = Batcher(
            self.faults.slowed(model.predict),
            self.settings.primary.max_batch_size,
            self.settings.primary.max_batch_wait_ms,
            batch_lanes(self.settings),
        ).start()

    def predict(self, texts: list[str], urgent: bool = False) -> list[Prediction]:
        assert self.batcher is not None
        with self._lock:
            self._in_flight += 1
        try:
            return self.batcher.submit(texts, PREDICT_TIMEOUT_S, urgent=urgent)
        finally:
            with self._lock:
                self._in_flight -= 1

    def probe(self) -> tuple[bool, float, list[float]]:
        """Run the known-answer texts through the batcher: (passed, probe_ms, p_positive)."""
        start = time.perf_counter()
        # Urgent: the probe asks "is inference alive?", not "how long is the queue?".
        answers = self.predict(probe_mod.TEXTS, urgent=True)
        probe_ms = round((time.perf_counter() - start) * 1000, 2)
        ps = [round(a.p_positive, 4) for a in answers]
        return probe_mod.passed(ps), probe_ms, ps


def memory_mb() -> dict[str, float | None]:
    """RSS and USS of this worker's process tree in MB, summed as the watchdog and the
    gateway sum them (`sentiguard.runtime.memory`), so /status shows one figure whoever
    reports it. USS is None when /proc/PID/smaps is unreadable."""
    sample = memory.sample(os.getpid())
    if sample is None:  # cannot happen for our own pid; keep the shape anyway
        return {"rss_mb": None, "uss_mb": None}
    return {"rss_mb": sample.rss_mb, "uss_mb": sample.uss_mb}

"""What a worker's HTTP threads share: the model, its batcher, readiness, faults, in-flight.

`WorkerState` is built before the model loads (the port answers /ready 503 "loading"
meanwhile, /live 200); `attach(model)` starts batching; the process records the memory
`footprint` (footprint.py) once the known-answer probe passed, then sets `ready`, and
sets `draining` on SIGTERM. `live()` is the body of GET /live: counters and a recent
memory reading, so it never waits on a batch or on a page-table walk. `secret` is the
per-`up` secret the process read at start (None: it had none, and serves /predict to
nobody; see process.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sentiguard.primary import probe as probe_mod
from sentiguard.primary.batcher import Batcher, batch_lanes
from sentiguard.primary.faults import Faults
from sentiguard.primary.progress import Progress
from sentiguard.runtime import endpoints, memory

if TYPE_CHECKING:
    from sentiguard.primary.footprint import Footprint
    from sentiguard.primary.inference import Prediction, PrimaryModel
    from sentiguard.settings import Settings

# Longest a /predict waits for its batch; the gateway's own deadline is much shorter.
PREDICT_TIMEOUT_S = 30.0
# /live is polled often (the watchdog's liveness check), and reading USS walks the
# process's page tables: /live took a median 92 ms with it against 7 ms for /ready (embedded
# model, a loaded 2-core machine). So /live reports a reading at most this old, refreshed
# in the background; /health still measures now.
LIVE_MEMORY_MAX_AGE_S = 5.0


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
        # Made before the model loads, so /live has counters (all zero) from the start.
        self.progress = Progress()
        self.footprint: Footprint | None = None
        self.ready = False
        self.draining = False
        self._in_flight = 0
        self._lock = threading.Lock()
        self._memory = MemoryReading(LIVE_MEMORY_MAX_AGE_S)

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
            progress=self.progress,
        ).start()

    def predict(
        self, texts: list[str], urgent: bool = False, timeout_s: float = PREDICT_TIMEOUT_S
    ) -> list[Prediction]:
        """Answers for `texts` within `timeout_s` (the caller's time left), else a
        TimeoutError (`DeadlinePassed` when the request was dropped unrun)."""
        assert self.batcher is not None
        with self._lock:
            self._in_flight += 1
        try:
            return self.batcher.submit(texts, timeout_s, urgent=urgent)
        finally:
            with self._lock:
                self._in_flight -= 1

    def progress_snapshot(self) -> dict[str, Any]:
        """The batch lanes' progress (`progress` of /live and /health)."""
        if self.batcher is None:
            return self.progress.snapshot(queued=0)
        return self.batcher.snapshot()

    def live(self) -> dict[str, Any]:
        """The body of GET /live: is the HTTP thread answering, and are batches finishing.

        Read from counters by the HTTP thread itself, never through the batcher: a worker
        busy with a batch of several seconds still answers in milliseconds."""
        return {
            "pid": os.getpid(),
            "ready": self.ready,
            "draining": self.draining,
            "in_flight": self.in_flight,
            **self._memory.recent(),
            "progress": self.progress_snapshot(),
            "memory": None if self.footprint is None else self.footprint.as_json(),
        }

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


class MemoryReading:
    """`memory_mb()` at most `max_age_s` old: a stale reading is returned as it is while a
    background thread takes a new one (one at a time); only the first is taken on the
    caller's path."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._value: dict[str, float | None] | None = None
        self._taken = 0.0
        self._refreshing = False
        self._lock = threading.Lock()

    def recent(self) -> dict[str, float | None]:
        with self._lock:
            value = self._value
            stale = time.monotonic() - self._taken > self.max_age_s
            refresh = value is not None and stale and not self._refreshing
            self._refreshing = self._refreshing or refresh
        if value is None:
            return self._take()
        if refresh:
            threading.Thread(target=self._take, name="memory-reading", daemon=True).start()
        return value

    def _take(self) -> dict[str, float | None]:
        value = memory_mb()
        with self._lock:
            self._value, self._taken, self._refreshing = value, time.monotonic(), False
        return value

"""Background polling of each worker's GET /ready, so routing is safe without the watchdog.

One daemon thread per worker (a hung worker must not delay the others' polls) asks
`/ready` every `POLL_INTERVAL_S` with a `POLL_TIMEOUT_S` timeout and records ready, pid
and model version in the `WorkerPool`, logging each change (`worker_ready`,
`worker_not_ready`). Requests never wait on it: they read what it last recorded. It also
samples the worker's process-tree memory (`runtime.memory`) while the watchdog's numbers
are missing or stale, so /status shows memory even without a watchdog.
"""

from __future__ import annotations

import threading
import time

import psutil

from sentiguard.gateway.client import FailureKind, WorkerClient, WorkerFailure
from sentiguard.gateway.workers import Worker, WorkerPool
from sentiguard.logs import EventLog, log_event
from sentiguard.runtime import memory

POLL_INTERVAL_S = 0.5
# /ready does no inference, but on a CPU-starved host a healthy worker can still be slow to
# answer; a false "not ready" costs more than a slower hang detection (the breaker and the
# watchdog catch hangs too). Two timeouts in a row mean it is not answering; a refused
# connection needs no second opinion.
POLL_TIMEOUT_S = 1.0
TIMEOUTS_BEFORE_NOT_READY = 2
WATCHDOG_FRESH_S = 10.0


class ReadinessPoller:
    """Polls every worker of `pool` until `stop()`; `poll_once` is one pass, for tests."""

    def __init__(
        self, pool: WorkerPool, log: EventLog = log_event, client: WorkerClient | None = None
    ) -> None:
        self.pool = pool
        self.log = log
        self.client = client or WorkerClient()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._timeouts: dict[int, int] = {}

    def start(self) -> None:
        for worker in self.pool.workers:
            thread = threading.Thread(
                target=self._run, args=(worker,), name=f"ready-{worker.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=POLL_TIMEOUT_S + 1)

    def _run(self, worker: Worker) -> None:
        while not self._stop.is_set():
            self.poll_once(worker)
            self._stop.wait(POLL_INTERVAL_S)
        self.client.close()

    def poll_once(self, worker: Worker) -> None:
        try:
            status, body = self.client.request("GET", worker.port, "/ready", None, POLL_TIMEOUT_S)
        except WorkerFailure as e:
            misses = self._timeouts.get(worker.index, 0) + 1
            if e.kind is FailureKind.TIMEOUT and misses < TIMEOUTS_BEFORE_NOT_READY:
                self._timeouts[worker.index] = misses
                return
            self._timeouts[worker.index] = 0
            reason = "unreachable" if e.kind is FailureKind.CONNECT else f"/ready {e.kind}"
            self._not_ready(worker, reason)
            return
        self._timeouts[worker.index] = 0
        if status == 200 and isinstance(body, dict) and body.get("ready") is True:
            pid = body.get("pid")
            version = body.get("model_version")
            pid = pid if isinstance(pid, int) else None
            version = str(version) if version is not None else None
            if self.pool.mark_ready(worker, pid, version):
                self.log("worker_ready", worker=worker.name, pid=pid, model_version=version)
            self._sample_memory(worker)
        else:
            said = body.get("reason") if isinstance(body, dict) else None
            self._not_ready(worker, str(said or f"/ready answered {status}"))

    def _not_ready(self, worker: Worker, reason: str) -> None:
        if self.pool.mark_not_ready(worker, reason):
            self.log("worker_not_ready", worker=worker.name, pid=worker.pid, reason=reason)

    def _sample_memory(self, worker: Worker) -> None:
        fresh = worker.report_at is not None and (
            time.monotonic() - worker.report_at < WATCHDOG_FRESH_S
        )
        if fresh or worker.pid is None:
            return
        # The process tree, as the watchdog and the worker's /health sum it: one figure in
        # /status whichever source reported last.
        try:
            sample = memory.sample(worker.pid)
        except (psutil.Error, OSError):
            return
        if sample is not None:
            worker.rss_mb = sample.rss_mb
            worker.uss_mb = sample.uss_mb

"""Background polling of each worker's GET /ready, so routing is safe without the watchdog.

One daemon thread per worker (a hung worker must not delay the others' polls) asks
`/ready` every `POLL_INTERVAL_S` with a `POLL_TIMEOUT_S` timeout and records ready, pid
and model version in the `WorkerPool`, logging each change (`worker_ready`,
`worker_not_ready`). Requests never wait on it: they read what it last recorded. It also
samples the worker's process-tree memory (`runtime.memory`) while the watchdog's numbers
are missing or stale, so /status shows memory even without a watchdog.

A port answers for our worker only with proof (`runtime.trust`): each poll sends a fresh
nonce in `X-Sentiguard-Challenge` (and no secret), and a "ready" answer counts only when
its `proof` is HMAC(secret, nonce:name) for the worker expected there. Anything else that
claims ready (a stranger on the port, a worker of another `up`, our worker started without
the secret) is not ready, reason `not_ours`, logged once as `worker_not_ours` with the port
and what answered, until the port proves itself again.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil

from sentiguard.gateway.client import FailureKind, WorkerClient, WorkerFailure
from sentiguard.gateway.workers import Worker, WorkerPool
from sentiguard.logs import EventLog, log_event
from sentiguard.runtime import memory, trust

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

    def __init__(self, pool: WorkerPool, client: WorkerClient, log: EventLog = log_event) -> None:
        self.pool = pool
        self.log = log
        self.client = client
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._timeouts: dict[int, int] = {}
        self._strangers: set[int] = set()  # workers whose port answered without proof

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
        nonce = trust.new_challenge()
        try:
            status, body = self.client.request(
                "GET",
                worker.port,
                "/ready",
                None,
                POLL_TIMEOUT_S,
                headers={trust.CHALLENGE_HEADER: nonce},
                auth=False,
            )
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
            if not self._proved(worker, nonce, body):
                if self.client.secret.value is None:  # our side cannot check yet
                    self._not_ready(worker, f"no secret at {self.client.secret.path}")
                else:
                    self._not_ours(worker, status, body)
                return
            self._strangers.discard(worker.index)
            pid = body.get("pid")
            version = body.get("model_version")
            pid = pid if isinstance(pid, int) else None
            version = str(version) if version is not None else None
            precision = body.get("precision")  # the worker's primary.precision choice
            precision = precision if isinstance(precision, dict) else None
            if self.pool.mark_ready(worker, pid, version, precision):
                self.log("worker_ready", worker=worker.name, pid=pid, model_version=version)
            self._sample_memory(worker)
        else:
            said = body.get("reason") if isinstance(body, dict) else None
            self._not_ready(worker, str(said or f"/ready answered {status}"))

    def _proved(self, worker: Worker, nonce: str, body: dict[str, Any]) -> bool:
        """Whether `body` proves it comes from `worker` of this `up`. On a failure the
        secret file is read again once: it may be new (a gateway started alone writes it
        after its poller started)."""
        secret = self.client.secret
        given = body.get("proof")
        if trust.proof_ok(secret.value, nonce, worker.name, given):
            return True
        return secret.refresh() and trust.proof_ok(secret.value, nonce, worker.name, given)

    def _not_ours(self, worker: Worker, status: int, body: dict[str, Any]) -> None:
        if worker.index not in self._strangers:
            self._strangers.add(worker.index)
            fields = ("name", "pid", "model_version", "proof_error")
            # What a stranger said, kept short: it chose these values.
            answered: dict[str, Any] = {"status": status}
            for key in (k for k in fields if k in body):
                value = body[key]
                answered[key] = (
                    value if value is None or isinstance(value, int) else str(value)[:80]
                )
            answered["proof"] = "wrong" if body.get("proof") else "missing"
            self.log(
                "worker_not_ours",
                worker=worker.name,
                port=worker.port,
                answered=answered,
                reason="its /ready answer carries no valid proof of this service's secret",
                fix=(
                    f"stop the process on port {worker.port} (`ss -ltnp`), or restart the "
                    f"service with `sentiguard up` (the secret is {self.client.secret.path})"
                ),
            )
        self._not_ready(worker, "not_ours")

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

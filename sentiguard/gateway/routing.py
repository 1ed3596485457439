"""Where a request goes: a primary worker within the deadline, else the fallback.

`Router.route(texts, deadline, shortened)` never raises for a primary failure. It asks the
pool for the least-loaded usable worker with room under its learnt limit and sends all the
texts to it in one `POST /predict` with the time left as connect and read timeout and as
`X-Deadline-Ms` (the worker drops work whose time passed: 504 `deadline_passed`). What
cannot be answered by a worker is answered by the in-process fallback, with the reason:

- no worker ready, drained or all breakers open -> `primary_down`
- workers ready but none with room, or none that
  would answer within the time left            -> `overloaded` (at once, no waiting)
- the worker timed out (or said deadline_passed) -> `primary_timeout`
- refused, reset, 5xx or a malformed answer       -> `primary_error`

Every answer and every timeout on the gateway's own deadline is a sample for the worker's
limiter (`limiter.py`). A timeout on a deadline the client shortened (`shortened`) is the
client's choice, not the worker's fault: it neither counts against the breaker (a half-open
probe slot it held is given back) nor lowers the limit.

A connection failure (refused, reset, closed without an answer) costs next to nothing and
means that process is gone, so the request gets one more try on another worker before it
falls back. The fallback itself is bounded by `FallbackAdmission`; when it is
full, `route` raises `Overloaded` (503 + Retry-After), the only error a client sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from sentiguard.gateway.admission import FallbackAdmission
from sentiguard.gateway.client import FailureKind, WorkerClient, WorkerFailure
from sentiguard.gateway.workers import Reason, Worker, WorkerPool
from sentiguard.logs import EventLog
from sentiguard.validation import DEADLINE_HEADER, DEADLINE_PASSED


class Fallback(Protocol):
    """The contract of `sentiguard.fallback.FallbackModel` the gateway relies on."""

    version: str

    def predict_proba(self, texts: list[str]) -> list[float]: ...


@dataclass
class Answer:
    """Probabilities for `texts`, in input order, and who gave them."""

    p_positive: list[float]
    truncated: list[bool]
    model: str  # "primary" | "fallback"
    model_version: str
    reason: Reason | None
    worker: str | None = None


class Router:
    def __init__(
        self,
        pool: WorkerPool,
        fallback: Fallback,
        admission: FallbackAdmission,
        log: EventLog,
        client: WorkerClient,
    ) -> None:
        self.pool = pool
        self.fallback = fallback
        self.admission = admission
        self.log = log
        self.client = client  # carries the per-up secret (a worker refuses /predict without)

    def route(self, texts: list[str], deadline: float, shortened: bool = False) -> Answer:
        """Answer `texts` before the monotonic `deadline` if a worker can; else the fallback.
        `shortened`: the client asked for a shorter deadline than the gateway's."""
        reason: Reason | None = None
        for _attempt in range(2):
            worker, why_not = self.pool.acquire(deadline - time.monotonic())
            if worker is None:
                # A worker that just failed explains more than "none is left".
                reason = reason or why_not
                break
            in_flight = worker.in_flight
            started = time.monotonic()
            try:
                return self._ask(worker, texts, deadline, in_flight)
            except WorkerFailure as e:
                failure = e
            except Exception as e:
                # A bug on this path must neither fail the request nor leave a half-open
                # breaker's probe slot claimed forever: count it as the worker's error.
                failure = WorkerFailure(FailureKind.ERROR, f"{type(e).__name__}: {e}")
            finally:
                self.pool.release(worker)
            timed_out = failure.kind is FailureKind.TIMEOUT
            reason = Reason.PRIMARY_TIMEOUT if timed_out else Reason.PRIMARY_ERROR
            if timed_out and shortened:
                # The client's short deadline ran out, not the worker's time: give back a
                # probe slot it may have lent us, and learn nothing from it.
                worker.breaker.release()
                break
            if timed_out:
                worker.limiter.sample(time.monotonic() - started, in_flight, dropped=True)
            self._record_failure(worker, failure)
            if failure.kind is not FailureKind.CONNECT or time.monotonic() >= deadline:
                break
        return self._fallback(texts, reason or Reason.PRIMARY_DOWN)

    def _ask(self, worker: Worker, texts: list[str], deadline: float, in_flight: int) -> Answer:
        started = time.monotonic()
        remaining = max(deadline - started, 0.001)
        status, body = self.client.request(
            "POST",
            worker.port,
            "/predict",
            {"texts": texts},
            remaining,
            headers={DEADLINE_HEADER: str(max(1, int(remaining * 1000)))},
        )
        answer = _parse_predict(status, body, len(texts))
        worker.breaker.success()
        worker.limiter.sample(time.monotonic() - started, in_flight)
        answer.worker = worker.name
        return answer

    def _record_failure(self, worker: Worker, failure: WorkerFailure) -> None:
        connection = failure.kind is FailureKind.CONNECT
        worker.breaker.failure(str(failure), connection=connection)
        if connection:
            self.pool.mark_not_ready(worker, "unreachable")
        self.log(
            "primary_failed",
            worker=worker.name,
            pid=worker.pid,
            kind=str(failure.kind),
            reason=str(failure),
            breaker=str(worker.breaker.state),
        )

    def _fallback(self, texts: list[str], reason: Reason) -> Answer:
        with self.admission.slot():
            probabilities = self.fallback.predict_proba(texts)
        return Answer(
            p_positive=[float(p) for p in probabilities],
            truncated=[False] * len(texts),
            model="fallback",
            model_version=self.fallback.version,
            reason=reason,
        )


def _parse_predict(status: int, body: Any, n: int) -> Answer:
    """Check a worker's /predict answer against the contract; a wrong one is an error.
    A 504 `deadline_passed` (the worker dropped work whose time ran out) is a timeout."""
    if status != 200:
        detail = body.get("error") if isinstance(body, dict) else None
        if status == 504 and isinstance(detail, dict) and detail.get("code") == DEADLINE_PASSED:
            raise WorkerFailure(
                FailureKind.TIMEOUT, "the worker's deadline passed before its batch"
            )
        raise WorkerFailure(FailureKind.ERROR, f"/predict answered HTTP {status}: {detail}")
    try:
        results = body["results"]
        if len(results) != n:
            raise ValueError(f"{len(results)} results for {n} texts")
        p = [float(r["p_positive"]) for r in results]
        if not all(0.0 <= x <= 1.0 for x in p):  # also rejects NaN
            raise ValueError(f"p_positive outside [0, 1]: {p}")
        truncated = [bool(r.get("truncated", False)) for r in results]
        version = str(body["model_version"])
    except (KeyError, TypeError, ValueError) as e:
        raise WorkerFailure(FailureKind.ERROR, f"/predict answer breaks the contract: {e}") from e
    return Answer(p, truncated, "primary", version, None)

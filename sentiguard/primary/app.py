"""The primary worker's HTTP app (Flask, served by waitress by `process.py`).

`create_app(worker)` builds the app around a `WorkerState` (state.py); nothing is built
at import. Routes (docs/internals.md, "Primary worker process"):

- POST /predict {"texts": [...]} -> {"results": [{"p_positive", "truncated"}, ...],
  "model_version", "pid"}, in input order; the body is checked by the validator the
  gateway uses (`sentiguard.validation`), with the same error codes. `X-Deadline-Ms:
  <digits>` is the time the caller has left: the worker waits at most that, and work
  still queued when it passes is dropped unrun (504 `deadline_passed`)
- GET /ready   200 once the model loaded and passed the known-answer probe, else 503;
  its `precision` is the arithmetic primary.precision chose, with the measured rates
  and drift (`precision.Choice.as_json`);
  with `X-Sentiguard-Challenge: <nonce>` its body also carries `name` and `proof`
  (`sentiguard.runtime.trust`), so the gateway can tell this worker from a stranger
- GET /health  runs the known-answer probe through the real batched path now
- GET /live    answered from counters by the HTTP thread (never through the batcher):
  pid, ready, draining, in_flight, memory now, the lanes' `progress` and the start-up
  memory measure; the watchdog judges liveness by progress from it
- POST /_fault only when faults.enabled (see faults.py); otherwise 404

/predict and /_fault need `Authorization: Bearer <the per-up secret>` (401 without it);
/ready, /health and /live stay open, for the watchdog and operators.

Errors use the one JSON shape `{"error": {"code", "message"}}` (`sentiguard.json_errors`).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request

from sentiguard import json_errors
from sentiguard.errors import BadRequest, HTTPError, Unauthorized
from sentiguard.primary.batcher import BatcherStopped, DeadlinePassed
from sentiguard.primary.state import PREDICT_TIMEOUT_S, WorkerState, memory_mb
from sentiguard.runtime import trust
from sentiguard.validation import DEADLINE_HEADER, DEADLINE_PASSED, Limits, parse_predict

ROUTES_HINT = "A worker serves POST /predict, GET /ready, GET /health, GET /live."
# An hour: far past any deadline a gateway sends (its deadline_ms is ~1.5 s); a larger
# value is a bug in the caller, not a request to wait longer than PREDICT_TIMEOUT_S.
MAX_DEADLINE_MS = 3_600_000


def draining() -> HTTPError:
    return HTTPError("this worker is shutting down; send it elsewhere", code="draining", status=503)


def time_left_s(header: str | None) -> float | None:
    """The caller's X-Deadline-Ms in seconds (None without it); 400 when malformed.

    Only ASCII digits count (no sign, space or other scripts' digits), as at the
    gateway. 0 is well-formed: the time is up, and the request is dropped unrun."""
    if header is None:
        return None
    digits = header.lstrip("0") or "0"
    # Length before int(): int() of a few thousand digits is slow, and refused past 4,300.
    too_long = len(digits) > len(str(MAX_DEADLINE_MS))
    if not (header.isascii() and header.isdigit()) or too_long or int(digits) > MAX_DEADLINE_MS:
        raise BadRequest(
            f"{DEADLINE_HEADER} must be the milliseconds this call has left, as digits "
            f"from 0 to {MAX_DEADLINE_MS}, not {header[:40]!r}; omit it to wait up to "
            f"{PREDICT_TIMEOUT_S:g} s",
            code="bad_deadline",
        )
    return int(digits) / 1000.0


def out_of_time(left_s: float | None, error: TimeoutError) -> HTTPError:
    """The answer when no result came in time: 504 when the caller's deadline ran out
    (it stopped waiting too: not the worker's failure), else 503 as before deadlines."""
    if left_s is None or left_s > PREDICT_TIMEOUT_S:
        return HTTPError(
            f"no answer within {PREDICT_TIMEOUT_S} s; retry", code="timeout", status=503
        )
    what = (
        "was dropped unrun: its deadline passed while it waited for a batch"
        if isinstance(error, DeadlinePassed)
        else "got no answer before its deadline"
    )
    return HTTPError(
        f"this request {what} ({DEADLINE_HEADER}: {round(left_s * 1000)}); "
        f"the caller's time was up, so answer it elsewhere (the gateway's fallback does)",
        code=DEADLINE_PASSED,
        status=504,
    )


def require_caller(worker: WorkerState, header: str | None) -> None:
    """Refuse (401) a call without `Authorization: Bearer <secret>` of this `up`."""
    if trust.bearer_ok(header, worker.secret):
        return
    path = trust.secret_path(worker.settings)
    if worker.secret is None:
        message = (
            f"this worker started without a secret ({path} was missing), so it serves "
            f"/predict to nobody: restart the service with `sentiguard up`, which writes it"
        )
    else:
        message = (
            f"missing or wrong Authorization: send Authorization: Bearer <the content of "
            f"{path}>; only this service's gateway and watchdog call workers"
        )
    raise Unauthorized(message, headers={"WWW-Authenticate": 'Bearer realm="sentiguard-worker"'})


def identity(worker: WorkerState, nonce: str | None) -> dict[str, Any]:
    """`name` and, when asked with a well-formed challenge, the `proof` that this worker
    holds the secret of this `up` (`trust.proof`); `proof` is None when it cannot."""
    body: dict[str, Any] = {"name": worker.name}
    if nonce is None:
        return body
    if worker.secret is None:
        body.update(proof=None, proof_error="no_secret")
    elif not trust.valid_challenge(nonce):
        body.update(proof=None, proof_error="bad_challenge")
    else:
        body["proof"] = trust.proof(worker.secret, nonce, worker.name)
    return body


def create_app(worker: WorkerState) -> Flask:
    """The worker's Flask app around `worker` (which may still be loading)."""
    app = Flask("sentiguard.primary")
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    json_errors.install(app, routes=ROUTES_HINT, log=worker.log, event="worker_error")
    limits = Limits.from_settings(worker.settings)
    pid = os.getpid()

    @app.post("/predict")
    def predict() -> Any:
        worker.faults.gate()
        require_caller(worker, request.headers.get(trust.AUTH_HEADER))
        if worker.draining:
            raise draining()
        if not worker.ready or worker.model is None:
            raise HTTPError(
                "the model is still loading; retry when /ready is 200",
                code="loading",
                status=503,
            )
        left_s = time_left_s(request.headers.get(DEADLINE_HEADER))
        texts = parse_predict(request.get_data(), limits)
        timeout_s = PREDICT_TIMEOUT_S if left_s is None else min(left_s, PREDICT_TIMEOUT_S)
        try:
            answers = worker.predict(texts, timeout_s=timeout_s)
        except BatcherStopped:
            raise draining() from None
        except TimeoutError as e:
            raise out_of_time(left_s, e) from None
        return jsonify(
            results=[{"p_positive": a.p_positive, "truncated": a.truncated} for a in answers],
            model_version=worker.model.version,
            pid=pid,
        )

    @app.get("/ready")
    def ready() -> Any:
        worker.faults.gate()
        me = identity(worker, request.headers.get(trust.CHALLENGE_HEADER))
        if worker.draining:
            return jsonify(ready=False, reason="draining", pid=pid, **me), 503
        if not worker.ready or worker.model is None:
            return jsonify(ready=False, reason="loading", pid=pid, **me), 503
        return jsonify(
            ready=True,
            pid=pid,
            model_version=worker.model.version,
            precision=worker.model.precision_report,  # what primary.precision chose, why
            in_flight=worker.in_flight,
            **me,
        )

    @app.get("/health")
    def health() -> Any:
        worker.faults.gate()
        if worker.model is None or worker.batcher is None:
            return jsonify(status="loading", pid=pid, **memory_mb()), 503
        try:
            passed, probe_ms, ps = worker.probe()
        except BatcherStopped:
            return jsonify(status="draining", pid=pid, **memory_mb()), 503
        body = {
            "status": "ok" if passed else "wrong_answer",
            "probe_ms": probe_ms,
            "probe_p_positive": ps,
            "pid": pid,
            **memory_mb(),
            "model": worker.model.name,
            "model_version": worker.model.version,
            "in_flight": worker.in_flight,
            "leaked_mb": worker.faults.leaked_mb,
            "progress": worker.progress_snapshot(),
        }
        return jsonify(body), 200 if passed else 503

    @app.get("/live")
    def live() -> Any:
        # A hung worker (a process stuck in C) must not answer this either.
        worker.faults.gate()
        return jsonify(worker.live())

    if worker.settings.faults.enabled:

        @app.post("/_fault")
        def fault() -> Any:
            worker.faults.gate()  # a hung worker does not answer this either
            require_caller(worker, request.headers.get(trust.AUTH_HEADER))
            return jsonify(worker.faults.inject(request.get_json(force=True, silent=True)))

    return app

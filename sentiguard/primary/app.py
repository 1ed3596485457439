"""The primary worker's HTTP app (Flask, served by waitress by `process.py`).

`create_app(worker)` builds the app around a `WorkerState` (state.py); nothing is built
at import. Routes (docs/internals.md, "Primary worker process"):

- POST /predict {"texts": [...]} -> {"results": [{"p_positive", "truncated"}, ...],
  "model_version", "pid"}, in input order; the body is checked by the validator the
  gateway uses (`sentiguard.validation`), with the same error codes
- GET /ready   200 once the model loaded and passed the known-answer probe, else 503;
  with `X-Sentiguard-Challenge: <nonce>` its body also carries `name` and `proof`
  (`sentiguard.runtime.trust`), so the gateway can tell this worker from a stranger
- GET /health  runs the known-answer probe through the real batched path now
- POST /_fault only when faults.enabled (see faults.py); otherwise 404

/predict and /_fault need `Authorization: Bearer <the per-up secret>` (401 without it);
/ready and /health stay open, for the watchdog and operators.

Errors use the one JSON shape `{"error": {"code", "message"}}` (`sentiguard.json_errors`).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request

from sentiguard import json_errors
from sentiguard.errors import HTTPError, Unauthorized
from sentiguard.primary.batcher import BatcherStopped
from sentiguard.primary.state import PREDICT_TIMEOUT_S, WorkerState, memory_mb
from sentiguard.runtime import trust
from sentiguard.validation import Limits, parse_predict

ROUTES_HINT = "A worker serves POST /predict, GET /ready, GET /health."


def draining() -> HTTPError:
    return HTTPError("this worker is shutting down; send it elsewhere", code="draining", status=503)


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
        texts = parse_predict(request.get_data(), limits)
        try:
            answers = worker.predict(texts)
        except BatcherStopped:
            raise draining() from None
        except TimeoutError:
            raise HTTPError(
                f"no answer within {PREDICT_TIMEOUT_S} s; retry", code="timeout", status=503
            ) from None
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
        }
        return jsonify(body), 200 if passed else 503

    if worker.settings.faults.enabled:

        @app.post("/_fault")
        def fault() -> Any:
            worker.faults.gate()  # a hung worker does not answer this either
            require_caller(worker, request.headers.get(trust.AUTH_HEADER))
            return jsonify(worker.faults.inject(request.get_json(force=True, silent=True)))

    return app

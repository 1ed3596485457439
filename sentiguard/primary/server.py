"""The primary worker's HTTP app (Flask, served by waitress) and its state.

`create_app(worker)` builds the app around a `WorkerState`; nothing is built at import.
Routes (docs/internals.md, "Primary worker process"):

- POST /predict {"texts": [...]} -> {"results": [{"p_positive", "truncated"}, ...],
  "model_version", "pid"}, in input order
- GET /ready   200 once the model loaded and passed the known-answer probe, else 503
- GET /health  runs the known-answer probe through the real batched path now
- POST /_fault only when faults.enabled (see faults.py); otherwise 404

Errors use the one JSON shape `{"error": {"code", "message"}}` of sentiguard.errors.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request

from sentiguard.errors import BadRequest, HTTPError
from sentiguard.primary.batcher import Batcher, BatcherStopped
from sentiguard.primary.faults import Faults
from sentiguard.primary.model import batch_lanes

if TYPE_CHECKING:
    from sentiguard.primary.model import Prediction, PrimaryModel
    from sentiguard.settings import Settings

# The known-answer probe: one clearly positive and one clearly negative review. Both
# must land on their side of 0.5, so a model stuck on one answer fails it too.
PROBE = (
    ("这个手机非常好用，质量很好，我很满意，推荐购买！", True),
    ("质量太差了，用了两天就坏了，客服也不理人，非常失望。", False),
)
# Longest a /predict waits for its batch; the gateway's own deadline is much shorter.
PREDICT_TIMEOUT_S = 30.0


class WorkerState:
    """What the HTTP threads share: the model, its batcher, readiness, faults, in-flight."""

    def __init__(self, settings: Settings, index: int, log: Any) -> None:
        self.settings = settings
        self.index = index
        self.name = f"primary_{index}"
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
        answers = self.predict([text for text, _ in PROBE], urgent=True)
        probe_ms = round((time.perf_counter() - start) * 1000, 2)
        ps = [round(a.p_positive, 4) for a in answers]
        passed = all((p >= 0.5) == positive for p, (_, positive) in zip(ps, PROBE, strict=True))
        return passed, probe_ms, ps


def memory_mb() -> dict[str, float | None]:
    """RSS and USS of this process, in MB (USS needs /proc/PID/smaps; None if unreadable)."""
    import psutil

    proc = psutil.Process()
    rss = proc.memory_info().rss
    try:
        uss: float | None = round(proc.memory_full_info().uss / 2**20, 1)
    except (psutil.AccessDenied, AttributeError):
        uss = None
    return {"rss_mb": round(rss / 2**20, 1), "uss_mb": uss}


def _texts(body: Any, settings: Settings) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("texts"), list):
        raise BadRequest('the body must be JSON like {"texts": ["..."]}', code="invalid_body")
    texts = body["texts"]
    most = settings.gateway.max_texts
    longest = settings.gateway.max_text_chars
    if not texts or len(texts) > most:
        raise BadRequest(f"send 1 to {most} texts (got {len(texts)})", code="too_many_texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(f"texts[{i}] must be a non-empty string", code="invalid_text")
        if len(text) > longest:
            raise BadRequest(
                f"texts[{i}] has {len(text)} characters; the limit is {longest}",
                code="text_too_long",
            )
    return texts


def create_app(worker: WorkerState) -> Flask:
    """The worker's Flask app around `worker` (which may still be loading)."""
    app = Flask("sentiguard.primary")
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    pid = os.getpid()

    def error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
        return jsonify({"error": {"code": code, "message": message}, **extra}), status

    @app.errorhandler(HTTPError)
    def http_error(e: HTTPError) -> tuple[Response, int]:
        return jsonify(e.to_json()), e.status

    @app.errorhandler(404)
    def not_found(e: Exception) -> tuple[Response, int]:
        return error(404, "not_found", f"no route {request.method} {request.path}")

    @app.errorhandler(405)
    def not_allowed(e: Exception) -> tuple[Response, int]:
        return error(
            405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
        )

    @app.post("/predict")
    def predict() -> Any:
        worker.faults.gate()
        if worker.draining:
            return error(503, "draining", "this worker is shutting down; send it elsewhere")
        if not worker.ready or worker.model is None:
            return error(503, "loading", "the model is still loading; retry when /ready is 200")
        texts = _texts(request.get_json(force=True, silent=True), worker.settings)
        try:
            answers = worker.predict(texts)
        except BatcherStopped:
            return error(503, "draining", "this worker is shutting down; send it elsewhere")
        except TimeoutError:
            return error(503, "timeout", f"no answer within {PREDICT_TIMEOUT_S} s; retry")
        return jsonify(
            results=[{"p_positive": a.p_positive, "truncated": a.truncated} for a in answers],
            model_version=worker.model.version,
            pid=pid,
        )

    @app.get("/ready")
    def ready() -> Any:
        worker.faults.gate()
        if worker.draining:
            return jsonify(ready=False, reason="draining", pid=pid), 503
        if not worker.ready or worker.model is None:
            return jsonify(ready=False, reason="loading", pid=pid), 503
        return jsonify(
            ready=True, pid=pid, model_version=worker.model.version, in_flight=worker.in_flight
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
            return jsonify(worker.faults.inject(request.get_json(force=True, silent=True)))

    return app

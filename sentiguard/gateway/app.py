"""The public HTTP API of the gateway, built by `create_app(settings)`.

Nothing is created at import time. `create_app` loads the fallback model (unless one is
given), builds the worker pool, router, admission and metrics, starts the readiness
poller, and wires the routes of DESIGN.md "HTTP API". Control routes are not here: they
live in `control_app.py` and are served only on the unix socket.

Every response, error or not, carries `X-Request-ID` and the security headers
(`SECURITY_HEADERS`: CSP with frame-ancestors, nosniff, no referrer, no framing) and produces
one JSON access-log line; every error is `{"error": {"code", "message"}}` from the one renderer
(`sentiguard.json_errors`), which also counts rejections and sheds here.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request, send_from_directory

from sentiguard import json_errors
from sentiguard.errors import BadRequest, HTTPError, Overloaded
from sentiguard.gateway import auth, openapi
from sentiguard.gateway.admission import FallbackAdmission
from sentiguard.gateway.client import WorkerClient
from sentiguard.gateway.history import OpsHistory
from sentiguard.gateway.metrics import CONTENT_TYPE, Metrics
from sentiguard.gateway.readiness import ReadinessPoller
from sentiguard.gateway.routing import Answer, Fallback, Router
from sentiguard.gateway.state import GatewayState
from sentiguard.gateway.workers import WorkerPool
from sentiguard.labels import label_fields
from sentiguard.logs import EventLog, log_event
from sentiguard.runtime.trust import Secret
from sentiguard.settings import Settings
from sentiguard.validation import (
    DEADLINE_HEADER,
    Limits,
    check_content_type,
    parse_analyze,
    read_body,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Sent on every response as HTTP headers (a <meta> CSP cannot say frame-ancestors, and
# covers only the page it is in). The policy is the UI pages' own <meta> one, plus no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
EXTENSION = "sentiguard"
# Endpoints that need the API key when one is configured; the rest stay open.
KEYED_ENDPOINTS = frozenset({"analyze", "status", "metrics", "ops_data"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
ROUTES_HINT = (
    "The API is POST /analyze, GET /health, /ready, /status, /metrics, /openapi.json; "
    "the web UI is GET /, the operations page GET /ops (its data GET /ops/data)."
)

PLACEHOLDER = """<!doctype html><meta charset="utf-8"><title>sentiguard</title>
<h1>sentiguard</h1><p>The web UI files are not installed. The API answers at
<code>POST /analyze</code>; see <a href="/openapi.json">/openapi.json</a>.</p>
"""


class GatewayFlask(Flask):
    """Flask, with `OPTIONS <route>` answered as HTTP says: 204, no body, `Allow`."""

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


@dataclass
class Gateway:
    """What one app holds; `app.extensions["sentiguard"]`."""

    settings: Settings
    state: GatewayState
    router: Router
    metrics: Metrics
    poller: ReadinessPoller
    log: EventLog
    history: OpsHistory

    def close(self) -> None:
        """Stop background threads and close pooled connections (tests, shutdown)."""
        self.poller.stop()
        self.history.stop()
        self.poller.client.close_all()
        self.router.client.close_all()


def load_fallback(settings: Settings) -> Fallback:
    """The configured fallback model; raises `ModelLoadError` saying how to fix it."""
    from sentiguard.fallback.model import FallbackModel

    model: Fallback = FallbackModel.load(settings.fallback.model_dir)
    return model


def create_app(
    settings: Settings,
    *,
    fallback: Fallback | None = None,
    log: EventLog | None = None,
    start_poller: bool = True,
) -> Flask:
    """Build the public app. Raises `SettingsError` for a public bind without an API key."""
    auth.check_bind(settings)
    log = log or log_event
    fallback = fallback if fallback is not None else load_fallback(settings)
    pool = WorkerPool(settings)
    admission = FallbackAdmission(
        settings.gateway.fallback_capacity, settings.gateway.retry_after_s
    )
    state = GatewayState(pool, admission, fallback)
    metrics = Metrics(state)
    secret = Secret(settings)  # the per-up secret, read on first use; calls to workers need it
    gateway = Gateway(
        settings=settings,
        state=state,
        router=Router(pool, fallback, admission, log, WorkerClient(secret)),
        metrics=metrics,
        poller=ReadinessPoller(pool, WorkerClient(secret), log),
        log=log,
        history=OpsHistory(state, metrics, settings.watchdog.memory_limit_mb),
    )
    app = GatewayFlask(__name__, static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = gateway
    _register_hooks(app, gateway)
    _register_errors(app, gateway)
    _register_routes(app, gateway)
    if start_poller:
        gateway.poller.start()
        gateway.history.start()
    return app


def gateway_of(app: Flask) -> Gateway:
    gateway: Gateway = app.extensions[EXTENSION]
    return gateway


def _register_hooks(app: Flask, gateway: Gateway) -> None:
    api_key = gateway.settings.gateway.api_key
    log_text = gateway.settings.gateway.log_text

    @app.before_request
    def start() -> None:
        g.start = time.perf_counter()
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        g.model = g.reason = None
        g.n_texts = g.text_chars = 0
        g.texts = None
        if request.endpoint in KEYED_ENDPOINTS and request.method != "OPTIONS":
            auth.require_key(
                api_key, request.headers.get("Authorization"), request.headers.get("X-API-Key")
            )

    @app.after_request
    def finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers.update(SECURITY_HEADERS)
        fields: dict[str, Any] = {
            "request_id": g.get("request_id"),
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "model": g.get("model"),
            "reason": g.get("reason"),
            "latency_ms": round((time.perf_counter() - g.get("start", 0.0)) * 1e3, 2),
            "n_texts": g.get("n_texts", 0),
            "text_chars": g.get("text_chars", 0),
        }
        if log_text and g.get("texts") is not None:
            fields["texts"] = g.texts
        gateway.log("access", **fields)
        return response


def _register_errors(app: Flask, gateway: Gateway) -> None:
    def observe(error: HTTPError) -> None:
        if isinstance(error, Overloaded):
            g.reason = "shed"
            gateway.metrics.shed.inc()
        elif 400 <= error.status < 500:
            gateway.metrics.rejected.labels(code=error.code).inc()

    json_errors.install(
        app, routes=ROUTES_HINT, observe=observe, log=gateway.log, event="gateway_error"
    )


# Time kept for the fallback at the end of a request's deadline (it answers in ~1 ms
# alone, tens of ms when the gateway's threads contend for the interpreter).
FALLBACK_RESERVE_MS = 50.0


def _register_routes(app: Flask, gateway: Gateway) -> None:
    settings = gateway.settings
    state = gateway.state
    limits = Limits.from_settings(settings)
    deadline_ms: int = settings.gateway.deadline_ms
    min_deadline_ms: int = settings.gateway.min_deadline_ms

    @app.post("/analyze")
    def analyze() -> Response:
        check_content_type(request.mimetype, request.mimetype_params.get("charset"))
        body = read_body(request.stream, request.content_length, limits)
        parsed = parse_analyze(body, limits)
        g.n_texts = len(parsed.texts)
        g.text_chars = sum(len(t) for t in parsed.texts)
        g.texts = parsed.texts
        budget_ms = _deadline_ms(request.headers.get(DEADLINE_HEADER), deadline_ms, min_deadline_ms)
        # The deadline counts from the request's arrival, and keeps the fallback's own
        # few milliseconds inside it: a primary that times out must not push the answer
        # past what the client was promised.
        spent_ms = (time.perf_counter() - g.start) * 1e3
        primary_ms = max(budget_ms - spent_ms - FALLBACK_RESERVE_MS, 0.0)
        state.request_started()
        try:
            answer = gateway.router.route(
                parsed.texts,
                time.monotonic() + primary_ms / 1e3,
                shortened=budget_ms < deadline_ms,
            )
        finally:
            state.request_finished()
        latency_s = time.perf_counter() - g.start
        g.model, g.reason = answer.model, answer.reason and str(answer.reason)
        gateway.metrics.answered(answer.model, g.reason, len(parsed.texts), latency_s)
        results = _results(parsed.texts, answer, round(latency_s * 1e3, 2))
        return jsonify({"results": results} if parsed.batch else results[0])

    @app.get("/health")
    def health() -> Response:
        return jsonify(state.health())

    @app.get("/ready")
    def ready() -> Response:
        status, body = state.ready()
        response = jsonify(body)
        response.status_code = status
        return response

    @app.get("/status")
    def status() -> Response:
        return jsonify(state.status())

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(gateway.metrics.render(), content_type=CONTENT_TYPE)

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        return jsonify(openapi.spec(settings))

    @app.get("/")
    def index() -> Response:
        if (STATIC_DIR / "index.html").is_file():
            return send_from_directory(STATIC_DIR, "index.html")
        return Response(PLACEHOLDER, content_type="text/html; charset=utf-8")

    @app.get("/ops")
    def ops_page() -> Response:
        # Open like the UI page: it holds no data, and asks for the key /ops/data needs.
        return send_from_directory(STATIC_DIR, "ops.html")

    @app.get("/ops/data")
    def ops_data() -> Response:
        return jsonify(gateway.history.body())

    @app.get("/static/<path:filename>")
    def static_file(filename: str) -> Response:
        return send_from_directory(STATIC_DIR, filename)


def _deadline_ms(header: str | None, configured: int, floor: int = 1) -> int:
    """The configured deadline, or less if the client asks (X-Deadline-Ms) for less.

    Only ASCII digits count, as openapi.py's pattern says (not `int()`'s signs,
    underscores, spaces or other scripts' digits); more than the configured is capped to it;
    less than `floor` (gateway.min_deadline_ms) is refused.
    """
    if header is None:
        return configured
    digits = header.lstrip("0") if header.isascii() and header.isdigit() else ""
    if len(digits) > len(str(configured)):
        return configured  # more digits than the configured deadline: larger, so capped
    asked = int(digits) if digits else 0
    if asked < floor:
        raise BadRequest(
            f"X-Deadline-Ms must be whole milliseconds, at least {floor} "
            f"(gateway.min_deadline_ms), not {header!r}: ask for {floor} to {configured} ms, "
            f"or omit the header to use the service's {configured} ms.",
            code="bad_deadline",
        )
    return min(asked, configured)


def _results(texts: list[str], answer: Answer, latency_ms: float) -> list[dict[str, Any]]:
    degraded = answer.model == "fallback"
    reason = None if answer.reason is None else str(answer.reason)
    return [
        {
            "text": text,
            **label_fields(p),
            "model": answer.model,
            "model_version": answer.model_version,
            "truncated": truncated,
            "degraded": degraded,
            "reason": reason,
            "latency_ms": latency_ms,
        }
        for text, p, truncated in zip(texts, answer.p_positive, answer.truncated, strict=True)
    ]

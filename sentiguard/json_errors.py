"""The one error renderer of every Flask app in sentiguard (gateway, control, worker).

`install(app, ...)` registers handlers so that whatever goes wrong in a request leaves as
the one JSON shape `{"error": {"code": "...", "message": "..."}}`, with its status and
headers:

- an `HTTPError` (sentiguard.errors) as it is: its status, code, message and headers;
- a werkzeug `HTTPException` (no route, wrong method, 413 ...) as a `HTTPError` whose
  code is werkzeug's name in snake case (`not_found`, `method_not_allowed` with `Allow`);
- any other exception as 500 `internal_error`, logged with its type and message (the
  client gets only the type: a message can hold a path or a review's text).

Each app keeps its own words where they help a caller: `routes` is the hint a 404 adds
(the public API lists its routes), `observe` sees every error rendered (the gateway counts
rejections and sheds by code), `log` takes the `event` line of an unexpected one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from sentiguard.errors import HTTPError
from sentiguard.logs import log_event

Observer = Callable[[HTTPError], None]
Log = Callable[..., None]  # an EventLog, or a process's own (a worker adds its name)


def render(error: HTTPError) -> Response:
    """The JSON response for one error: shape, status and headers."""
    response = jsonify(error.to_json())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def from_werkzeug(error: HTTPException, routes: str = "") -> HTTPError:
    """The `HTTPError` a werkzeug exception stands for, with a message saying what to do."""
    if isinstance(error, NotFound):
        hint = f" {routes}" if routes else ""
        return HTTPError(f"no route {request.path}.{hint}", code="not_found", status=404)
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or []))
        return HTTPError(
            f"{request.method} is not allowed on {request.path}; use {allowed}.",
            code="method_not_allowed",
            status=405,
            headers={"Allow": allowed},
        )
    status = error.code or 500
    code = re.sub(r"\W+", "_", (error.name or "error").lower()).strip("_")
    return HTTPError(error.description or code, code=code, status=status)


def install(
    app: Flask,
    *,
    routes: str = "",
    observe: Observer | None = None,
    log: Log = log_event,
    event: str = "app_error",
) -> None:
    """Render every error of `app` in the one JSON shape (see the module docstring)."""

    def answer(error: HTTPError) -> Response:
        if observe is not None:
            observe(error)
        return render(error)

    @app.errorhandler(HTTPError)
    def ours(error: HTTPError) -> Response:
        return answer(error)

    @app.errorhandler(HTTPException)
    def werkzeug(error: HTTPException) -> Response:
        return answer(from_werkzeug(error, routes))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        request_id = g.get("request_id")
        log(
            event,
            app=app.name,
            request_id=request_id,
            path=request.path,
            error=f"{type(error).__name__}: {error}",
        )
        where = f"with request id {request_id}" if request_id else "with its time and path"
        report = "that id" if request_id else "the time"
        return answer(
            HTTPError(
                f"internal error ({type(error).__name__}); it is logged {where}. Retry; if it "
                f"repeats, report {report}.",
                code="internal_error",
                status=500,
            )
        )

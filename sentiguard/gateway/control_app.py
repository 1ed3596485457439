"""The control app: the watchdog's channel into the gateway, served only on the unix socket.

Routes (docs/internals.md, "Gateway control socket"):

- `PUT /control/workers/<name>`: drain/undrain a worker and hand over the watchdog's view
  of it (state, memory, restarts, parked, `memory_limit_mb` and `memory_limit_source`)
  -> `{"name", "in_flight", "drain"}`; the
  watchdog repeats it until `in_flight` is 0. `GET` answers the same without changing.
- `PUT /control/watchdog`: the watchdog's limits and last decisions, shown in /status.
- `GET /control/local`: this process's own counts (per-worker in flight, fallback, itself),
  which a sibling gateway process adds to its /status and /metrics (`siblings.py`).

Each gateway process serves its own socket, `<run_dir>/control_I.sock`.

Every request must carry `X-Sentiguard-Secret` equal to `<run_dir>/secret` (read at each
request, so a new `up` with a new secret needs no gateway restart); else 403. This app
is never mounted on the public port, so the public routes cannot reach it either way.
Errors, 403 included, are the one JSON shape of `sentiguard.json_errors`.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from flask import Flask, Response, jsonify, request

from sentiguard import json_errors
from sentiguard.errors import BadRequest, Forbidden, HTTPError
from sentiguard.gateway.state import GatewayState
from sentiguard.logs import EventLog
from sentiguard.runtime import control
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings


def create_control_app(settings: Settings, state: GatewayState, log: EventLog) -> Flask:
    app = Flask(__name__ + ".control", static_folder=None)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    secret_file = RunDir(settings).secret

    @app.before_request
    def check_secret() -> None:
        try:
            expected = secret_file.read_text().strip()
        except OSError:
            raise Forbidden(
                f"no control secret at {secret_file}: start the service with `sentiguard up`, "
                f"which writes it."
            ) from None
        given = request.headers.get(control.SECRET_HEADER, "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise Forbidden(
                f"missing or wrong {control.SECRET_HEADER}: send the content of {secret_file}."
            )

    json_errors.install(app, log=log, event="control_error")

    @app.route("/control/workers/<name>", methods=["GET", "PUT"])
    def worker(name: str) -> Response:
        target = state.pool.by_name(name)
        if target is None:
            names = ", ".join(w.name for w in state.pool.workers)
            raise HTTPError(
                f"no worker {name!r}; this gateway routes to {names}.",
                code="unknown_worker",
                status=404,
            )
        if request.method == "GET":
            # `ready`, `pid` and `breaker`: whether this process routes to the worker yet
            # (its own poller's view), which a reload or recycle waits for before it takes
            # another worker away (`runtime.drain.GatewayLink.wait_routable`).
            return jsonify(
                {
                    "name": name,
                    "in_flight": target.in_flight,
                    "drain": target.drain,
                    "ready": target.ready,
                    "pid": target.pid,
                    "breaker": str(target.breaker.state),
                }
            )
        report = _json_object()
        before = target.drain
        answer = state.pool.apply_report(target, report)
        if answer["drain"] != before:
            log(
                "worker_drain" if answer["drain"] else "worker_undrain",
                worker=name,
                pid=report.get("pid"),
                reason=report.get("reason"),
                in_flight=answer["in_flight"],
            )
        return jsonify(answer)

    @app.put("/control/watchdog")
    def watchdog() -> Response:
        state.record_watchdog(_json_object())
        return jsonify({"ok": True})

    @app.get("/control/local")
    def local() -> Response:
        return jsonify(state.local_view())

    return app


def _json_object() -> dict[str, Any]:
    try:
        body = json.loads(request.get_data() or b"{}")
    except ValueError as e:
        raise BadRequest(f"the body is not JSON ({e}); send a JSON object.") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object.")
    return body

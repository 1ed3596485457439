"""GET /openapi.json: the public API, written by hand and held exact by schemathesis.

The contract (tests/test_contract.py runs schemathesis with every check against a live
gateway; tests/test_gateway_api.py checks every public route is here):

- every object the server sends names its required properties, and the answers of
  POST /analyze forbid other ones, so the `oneOf` of a result and `{results}` is exclusive;
- a request the schema accepts is one the server accepts, with the rules of
  `sentiguard/validation.py` (non-blank text by Python's `str.strip`, `max_text_chars`,
  `max_texts`, `max_json_depth`), except the one limit JSON Schema cannot say: the body's
  size in bytes (`max_body_bytes`, 413);
- every status a route gives is listed, errors in the one shape of `json_errors`, and on
  every operation the refusals of the HTTP server itself (`http_server.py`: malformed
  HTTP, body or header too large, unknown Transfer-Encoding, connections full), which
  come before any route and so without `X-Request-ID`;
- every path answers `OPTIONS` with 204, no body and `Allow` (added to each path here), and
  any other undeclared method with 405 and `Allow`.
"""

from __future__ import annotations

from typing import Any

from sentiguard import __version__
from sentiguard.settings import Settings

JSON = dict[str, Any]
_ERROR = {"$ref": "#/components/schemas/Error"}
# Python's whitespace (`str.isspace`, what `str.strip` removes), as a regex class. JSON
# Schema's `\s` is ECMA-262's, a different set, so the characters are spelled out.
BLANK = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{BLANK}]"
_ERROR_TEXT = {
    400: "bad input (`error.code` says which rule, the message what to send)",
    401: "missing or wrong API key (see WWW-Authenticate)",
    404: "no such file",
    413: "body larger than gateway.max_body_bytes",
    415: "Content-Type is not application/json (UTF-8)",
    500: "internal error, logged with the request id: retry, and report the id if it repeats",
    503: "load shed: retry after the Retry-After header's seconds",
}
# What the HTTP server refuses before the app sees a request (http_server.describe_error).
_REFUSED = {
    400: "malformed HTTP, refused by the HTTP server before any route",
    408: "the body came slower than gateway.body_min_bytes_per_s once gateway.body_timeout_s "
    "had passed (`body_too_slow`); the connection is closed",
    413: "body larger than gateway.max_body_bytes",
    431: "request header too large",
    501: "a Transfer-Encoding other than chunked",
    503: "the gateway holds its most connections: retry after the Retry-After seconds",
    500: _ERROR_TEXT[500],
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    503: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}},
}
_REQUEST_ID = {
    "description": "echoed when it matches ^[A-Za-z0-9._:-]{1,128}$, else a new one",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
    "required": True,
}


def _json(schema: JSON, description: str) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int, texts: dict[int, str] = _ERROR_TEXT) -> JSON:
    responses = {}
    for s in (*statuses, 500):
        responses[str(s)] = _json(_ERROR, texts[s])
        if s in _HEADERS:
            responses[str(s)]["headers"] = dict(_HEADERS[s])
    return responses


def _file(description: str, media_type: str) -> JSON:
    """A file answer (`send_from_directory`): conditional and range requests included."""
    any_body: JSON = {media_type: {"schema": {}}}
    return {
        "200": {"description": description, "content": any_body},
        "206": {"description": "the Range asked for", "content": any_body},
        "304": {"description": "not modified since If-None-Match / If-Modified-Since"},
        "416": {"description": "the Range asked for is outside the file"},
    }


def _object(properties: JSON, required: list[str] | None = None, closed: bool = False) -> JSON:
    """An object that always carries `required` (default: every property); `closed` forbids
    others (the shapes clients branch on; /status and /ops/data may grow)."""
    schema: JSON = {
        "type": "object",
        "required": list(properties) if required is None else required,
        "properties": properties,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def _nullable(kind: str) -> JSON:
    return {"type": [kind, "null"]}


STR, INT, NUM, BOOL = ({"type": t} for t in ("string", "integer", "number", "boolean"))
OBJ = {"type": "object"}


def _array(items: JSON) -> JSON:
    return {"type": "array", "items": items}


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _get(summary: str, responses: JSON, security: list[Any] | None = None, **more: Any) -> JSON:
    """A path with one GET operation (`security` only on the keyed routes)."""
    keyed = {} if security is None else {"security": security}
    return {"get": {"summary": summary, **keyed, **more, "responses": responses}}


def _json_values(max_depth: int) -> JSON:
    """`JsonDepthN`: any JSON value nested at most N deep, for the extra fields of a body
    (the server ignores them, but refuses a body nested deeper than gateway.max_json_depth)."""
    scalar = {"type": ["string", "number", "boolean", "null"]}
    schemas: JSON = {"JsonDepth0": scalar}
    for n in range(1, max_depth + 1):
        inner = _ref(f"JsonDepth{n - 1}")
        schemas[f"JsonDepth{n}"] = {
            "anyOf": [scalar, _array(inner), {**OBJ, "additionalProperties": inner}]
        }
    return schemas


def schemas(settings: Settings) -> JSON:
    """components.schemas: the answers and errors the routes share."""
    g = settings.gateway
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    reasons = [None, "primary_down", "overloaded", "primary_timeout", "primary_error"]
    result = {
        "text": STR,
        "label": {"type": "string", "enum": ["positive", "negative"]},
        "label_zh": {"type": "string", "enum": ["正面", "负面"]},
        "score": {**probability, "description": "probability of the label"},
        "scores": _object({"positive": probability, "negative": probability}, closed=True),
        "model": {"type": "string", "enum": ["primary", "fallback"]},
        "model_version": STR,
        "truncated": BOOL,
        "degraded": {**BOOL, "description": "true when the fallback answered"},
        "reason": {"type": ["string", "null"], "enum": reasons},
        "latency_ms": {**NUM, "minimum": 0},
    }
    worker = {
        "name": STR,
        "pid": _nullable("integer"),
        "port": INT,
        "state": STR,
        "ready": BOOL,
        "rss_mb": _nullable("number"),
        "uss_mb": _nullable("number"),
        "restarts": {**OBJ, "additionalProperties": INT},
        "breaker": {"type": "string", "enum": ["closed", "open", "half_open"]},
        "in_flight": {**INT, "minimum": 0},
        "drain": BOOL,
        "model_version": _nullable("string"),
        # primary.precision's choice: {"precision", "requested", "reason", "rates", ...}
        "precision": _nullable("object"),
        "reason": _nullable("string"),
        # Its learnt concurrency limit (gateway.admission), summed over the gateway processes.
        "capacity": {**INT, "minimum": 1},
        "memory_limit_mb": _nullable("number"),  # the watchdog's, and how it derived it
        "memory_limit_source": _nullable("string"),
    }
    # The memory limit only once the watchdog reported it.
    optional = {"model_version", "precision", "reason", "memory_limit_mb", "memory_limit_source"}
    watchdog = {
        "pid": _nullable("integer"),
        "limits": OBJ,
        "decisions": _array(OBJ),
        "last_report_age_s": _nullable("number"),
        "stale": BOOL,
    }
    fallback = {"capacity": INT, "in_use": INT, "shed_total": INT, "model_version": STR}
    # Every gateway process; one that did not answer the one answering has no pid/uptime.
    gateway = {
        "name": STR,
        "index": INT,
        "pid": _nullable("integer"),
        "uptime_s": _nullable("number"),
        "restarts": _nullable("integer"),
        "reachable": BOOL,
    }
    return {
        "Result": _object(result, closed=True),
        "Results": _object({"results": _array(_ref("Result"))}, closed=True),
        "Error": _object({"error": _object({"code": STR, "message": STR})}, closed=True),
        "Text": {
            "type": "string",
            "minLength": 1,
            "maxLength": g.max_text_chars,
            "pattern": NOT_BLANK,
            "description": "at least one character that is not whitespace (Python's "
            "str.isspace), at most gateway.max_text_chars characters, valid Unicode",
        },
        "Worker": _object(worker, required=[k for k in worker if k not in optional]),
        "Status": _object(
            {
                "workers": _array(_ref("Worker")),
                "fallback": _object(fallback),
                "watchdog": _object(watchdog, required=[k for k in watchdog if k != "decisions"]),
                "gateways": _array(_object(gateway)),
                # `up`'s report (null when not run by `sentiguard up`): each gateway
                # process's and the watchdog's state, crash loop and restarts by `up`.
                "programs": _nullable("object"),
            }
        ),
        **_json_values(g.max_json_depth - 1),
    }


def _analyze_body(settings: Settings) -> JSON:
    """Exactly one of "text" or "texts"; other fields are ignored if not nested too deep."""
    g = settings.gateway
    extra = _ref(f"JsonDepth{g.max_json_depth - 1}")
    texts = {"type": "array", "minItems": 1, "maxItems": g.max_texts, "items": _ref("Text")}
    one = {"text": _ref("Text"), "texts": False}
    batch = {"texts": texts, "text": False}
    return {
        "oneOf": [
            {**OBJ, "required": ["text"], "properties": one, "additionalProperties": extra},
            {**OBJ, "required": ["texts"], "properties": batch, "additionalProperties": extra},
        ],
        "description": f"at most {g.max_body_bytes} bytes (gateway.max_body_bytes: 413 beyond)",
    }


def _ops_data() -> JSON:
    column = _array({"type": ["number", "null"]})
    series = _object(
        {
            "t": column,
            "answers": {**OBJ, "additionalProperties": column},
            "shed": column,
            "workers": {**OBJ, "additionalProperties": {**OBJ, "additionalProperties": column}},
        }
    )
    series["description"] = "columns, oldest first; t in wall-clock seconds"
    incident = {
        "worker": STR,
        "cause": STR,
        "ts": {**STR, "description": "ISO 8601, UTC"},
        "end_ts": STR,
        "summary": STR,
        "open": BOOL,
        "recovered_s": _nullable("number"),
    }
    return _object(
        {
            "now": {**NUM, "description": "wall-clock seconds"},
            "gateway_pid": INT,
            "window_s": INT,
            "interval_s": NUM,
            "memory_limit_mb": {
                **_nullable("number"),
                "description": "the memory limit the chart draws; null until one is known",
            },
            "capacity_per_worker": INT,
            "series": series,
            "workers": _array(OBJ),
            "fallback": OBJ,
            "watchdog": OBJ,
            "incidents": _array(_object(incident)),
        }
    )


def paths(settings: Settings) -> JSON:
    g = settings.gateway
    keyed: list[Any] = [{"bearer": []}, {"apiKey": []}] if g.api_key else []
    key = (401,) if g.api_key else ()  # a 401 only when a key is configured
    html = {"200": {"description": "HTML", "content": {"text/html": {"schema": {}}}}}
    health = _object(
        {"status": {"type": "string", "enum": ["ok", "degraded"]}, "reasons": _array(STR)},
        closed=True,
    )
    ready = _object({"ready": {"const": True}, "primary_ready": BOOL})
    stopping = _object({"ready": {"const": False}, "primary_ready": BOOL, "reason": STR})
    deadline = {
        "name": "X-Deadline-Ms",
        "in": "header",
        # A header is text: the digits' spelling is the contract (app._deadline_ms), and
        # the pattern holds the floor. The bounds as numbers are extensions, since JSON
        # Schema's minimum/maximum do not apply to strings (and a larger value is capped,
        # not refused).
        "schema": {
            "type": "string",
            "pattern": at_least_pattern(g.min_deadline_ms),
            "x-minimum": g.min_deadline_ms,
            "x-maximum": g.deadline_ms,
        },
        "description": "ask for a shorter deadline: whole milliseconds in ASCII digits, "
        f"at least gateway.min_deadline_ms ({g.min_deadline_ms}; less is 400 bad_deadline); "
        f"above gateway.deadline_ms ({g.deadline_ms}) it is capped to it",
    }
    file = {"name": "file", "in": "path", "required": True, "example": "style.css"}
    return {
        "/analyze": {
            "post": {
                "summary": "Sentiment of one text or a batch (results in input order)",
                "security": keyed,
                "parameters": [deadline, {"name": "X-Request-ID", "in": "header", "schema": STR}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _analyze_body(settings)}},
                },
                "responses": {
                    "200": _json(
                        {"oneOf": [_ref("Result"), _ref("Results")]},
                        'the answer: a Result for {"text"}, Results for {"texts"}',
                    ),
                    **_errors(400, *key, 413, 415, 503),
                },
            }
        },
        "/health": _get(
            "liveness: 200 while the gateway can answer at all",
            {"200": _json(health, "ok, or degraded with the reasons"), **_errors()},
        ),
        "/ready": _get(
            "readiness: 200 whenever the gateway can answer (the fallback counts)",
            {
                "200": _json(ready, "ready"),
                "503": _json(stopping, "shutting down"),
                **_errors(),
            },
        ),
        "/status": _get(
            "workers, fallback, watchdog and gateway processes",
            {"200": _json(_ref("Status"), "status"), **_errors(*key)},
            keyed,
        ),
        "/metrics": _get(
            "Prometheus metrics",
            {
                "200": {
                    "description": "Prometheus text format 0.0.4",
                    "content": {"text/plain": {"schema": STR}},
                },
                **_errors(*key),
            },
            keyed,
        ),
        "/openapi.json": _get(
            "this document",
            {
                "200": _json(_object({"openapi": STR, "info": OBJ, "paths": OBJ}), "OpenAPI"),
                **_errors(),
            },
        ),
        "/": _get("the web UI", {**html, **_errors()}),
        "/ops": _get(
            "the operations page (it asks for the API key /ops/data needs)",
            {**_file("HTML", "text/html"), **_errors()},
        ),
        "/ops/data": _get(
            "the operations page's data: the last minutes sampled each second (worker "
            "memory, in flight, breaker, ready; answers/s by model and fallback reason, "
            "shed/s), the workers with their limits, and the watchdog's decisions grouped "
            "into incidents, newest first",
            {"200": _json(_ops_data(), "operations data"), **_errors(*key)},
            keyed,
        ),
        "/static/{file}": _get(
            "web UI files",
            {**_file("the file", "*/*"), **_errors(404)},
            parameters=[{**file, "schema": {**STR, "minLength": 1}}],
        ),
    }


def _conventions(documented: JSON) -> JSON:
    """Every path answers OPTIONS; every operation lists the HTTP server's refusals; every
    answer from the app carries X-Request-ID."""
    for operations in documented.values():
        in_path = [p for p in operations.get("get", {}).get("parameters", []) if p["in"] == "path"]
        methods = {m.upper() for m in operations} | {"OPTIONS"}
        if "get" in operations:
            methods.add("HEAD")  # Flask answers HEAD wherever it answers GET
        allow = {"schema": STR, "required": True, "description": ", ".join(sorted(methods))}
        operations["options"] = {
            "summary": "the methods this path allows",
            **({"parameters": in_path} if in_path else {}),
            "responses": {
                "204": {
                    "description": "no body; Allow lists the methods",
                    "headers": {"Allow": allow},
                }
            },
        }
        for operation in operations.values():
            responses = operation["responses"]
            for status, refusal in _errors(*_REFUSED, texts=_REFUSED).items():
                responses.setdefault(status, refusal)
            for status, response in responses.items():
                from_app = int(status) not in _REFUSED  # a refusal may come from either
                request_id = {**_REQUEST_ID, "required": from_app}
                response.setdefault("headers", {})["X-Request-ID"] = request_id
    return documented


def spec(settings: Settings) -> JSON:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sentiguard",
            "version": __version__,
            "description": "Chinese sentiment analysis that keeps answering while its model "
            "fails. Every answer says which model gave it and why. Errors are "
            '{"error": {"code", "message"}}; a path answers a method it does not list with '
            "405 and Allow, and an unknown path with 404.",
        },
        "paths": _conventions(paths(settings)),
        "components": {
            "schemas": schemas(settings),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def at_least_pattern(floor: int) -> str:
    """A regex for ASCII decimal numbers >= `floor` (> 0), leading zeros allowed:
    `at_least_pattern(50)` matches "50", "0099", "100", not "49" or "0"."""
    digits = str(floor)
    width = len(digits)
    longer = f"[1-9][0-9]{{{width},}}"  # more digits than the floor: larger
    same = [digits]  # as many digits: the floor, or larger at the first digit that differs
    for i, d in enumerate(digits):
        if d != "9":
            low = int(d) + 1
            first = str(low) if low == 9 else f"[{low}-9]"
            rest = width - i - 1
            same.append(digits[:i] + first + (f"[0-9]{{{rest}}}" if rest else ""))
    return f"^0*({'|'.join([longer, *same])})$"

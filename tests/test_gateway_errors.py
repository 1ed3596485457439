"""Every malformed request gets its 4xx in the one JSON error shape, and the app stays healthy;
every Flask app (public, control, worker) renders its errors in that one shape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from sentiguard.errors import BadRequest
from sentiguard.gateway.app import create_app, gateway_of
from sentiguard.gateway.control_app import create_control_app
from sentiguard.primary.app import create_app as create_worker_app
from sentiguard.primary.state import WorkerState
from sentiguard.runtime import control
from sentiguard.validation import json_depth
from tests.gateway_helpers import FakeFallback, ListLog, make_settings

LIMITS = {
    "gateway.max_body_bytes": 4000,
    "gateway.max_text_chars": 50,
    "gateway.max_texts": 3,
    "gateway.max_json_depth": 4,
}
JSON = "application/json"


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    # No worker listens on these ports: every valid request is answered by the fallback.
    app = create_app(
        make_settings(**LIMITS, **{"primary.base_port": 1, "primary.workers": 1}),
        fallback=FakeFallback(),
        log=ListLog(),
        start_poller=False,
    )
    yield app
    gateway_of(app).close()


# (case id, request kwargs for the test client, status, error code, words the message names)
CASES: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("empty text", {"json": {"text": ""}}, 400, "empty_text", "empty"),
    ("blank text", {"json": {"text": "  \n\t"}}, 400, "empty_text", "empty"),
    ("non-string text", {"json": {"text": 123}}, 400, "not_a_string", "string"),
    ("null text", {"json": {"text": None}}, 400, "not_a_string", "string"),
    ("no text key", {"json": {"review": "好"}}, 400, "missing_text", '"text"'),
    ("both keys", {"json": {"text": "好", "texts": ["好"]}}, 400, "missing_text", "exactly one"),
    ("not an object", {"json": ["好"]}, 400, "missing_text", "object"),
    ("texts not a list", {"json": {"texts": "好"}}, 400, "bad_texts", "list"),
    ("texts empty", {"json": {"texts": []}}, 400, "bad_texts", "non-empty"),
    ("bad item in batch", {"json": {"texts": ["好", 7, "差"]}}, 400, "not_a_string", "texts[1]"),
    ("empty item in batch", {"json": {"texts": ["好", "差", ""]}}, 400, "empty_text", "texts[2]"),
    ("too many texts", {"json": {"texts": ["好"] * 4}}, 400, "too_many_texts", "limit is 3"),
    ("text too long", {"json": {"text": "好" * 51}}, 400, "text_too_long", "limit is 50"),
    ("long item", {"json": {"texts": ["好", "好" * 51]}}, 400, "text_too_long", "texts[1]"),
    (
        "invalid JSON",
        {"data": '{"text": "好"'.encode(), "content_type": JSON},
        400,
        "invalid_json",
        "not valid JSON",
    ),
    (
        "invalid UTF-8",
        {"data": b'{"text": "\xff\xfe"}', "content_type": JSON},
        400,
        "invalid_utf8",
        "UTF-8",
    ),
    (
        "lone surrogate escape",
        {"data": b'{"text": "\\ud800"}', "content_type": JSON},
        400,
        "invalid_utf8",
        "surrogate",
    ),
    (
        "deeply nested JSON",
        {"data": b'{"text": ' + b"[" * 50 + b"]" * 50 + b"}", "content_type": JSON},
        400,
        "json_too_deep",
        "nested deeper than 4",
    ),
    (
        "hostile nesting",
        {"data": b"[" * 100_000, "content_type": JSON},
        413,
        "payload_too_large",
        "4000 bytes",
    ),
    (
        "wrong content type",
        {"data": '{"text": "好"}'.encode(), "content_type": "text/plain"},
        415,
        "unsupported_media_type",
        "application/json",
    ),
    (
        "no content type",
        {"data": '{"text": "好"}'.encode()},
        415,
        "unsupported_media_type",
        "application/json",
    ),
    (
        "wrong charset",
        {"data": '{"text": "好"}'.encode("gbk"), "content_type": JSON + "; charset=gbk"},
        415,
        "unsupported_media_type",
        "UTF-8",
    ),
    (
        "body too long",
        {"json": {"texts": ["好" * 40] * 3, "pad": "x" * 5000}},
        413,
        "payload_too_large",
        "4000 bytes",
    ),
    (
        "bad deadline header",
        {"json": {"text": "好"}, "headers": {"X-Deadline-Ms": "soon"}},
        400,
        "bad_deadline",
        "X-Deadline-Ms",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_analyze_request_is_a_4xx_in_the_one_error_shape(
    app: Flask, kwargs: dict[str, Any], status: int, code: str, names: str
) -> None:
    response = app.test_client().post("/analyze", **kwargs)
    assert response.status_code == status
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert names in body["error"]["message"]
    assert response.headers["X-Request-ID"]


def test_deep_nesting_inside_a_string_is_not_nesting() -> None:
    assert json_depth('{"text": "[[[[[[[[[[{{{{{"}') == 1
    assert json_depth('{"text": "\\"[[[[["}') == 1
    assert json_depth('{"texts": [["a"]]}') == 3
    assert json_depth("[" * 100_000) == 100_000  # counted, not recursed


def test_unknown_route_is_404_in_the_same_shape(app: Flask) -> None:
    response = app.test_client().get("/nope")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert "/analyze" in response.get_json()["error"]["message"]


def test_wrong_method_is_405_in_the_same_shape(app: Flask) -> None:
    response = app.test_client().get("/analyze")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]
    assert response.get_json()["error"]["message"].endswith("use OPTIONS, POST.")


def test_control_routes_do_not_exist_on_the_public_app(app: Flask) -> None:
    client = app.test_client()
    response = client.put("/control/workers/primary_0", json={"drain": True})
    assert response.status_code == 404
    assert client.put("/control/watchdog", json={}).status_code == 404


def test_app_stays_healthy_after_every_bad_request(app: Flask) -> None:
    client = app.test_client()
    for _, kwargs, *_ in CASES:
        client.post("/analyze", **kwargs)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    good = client.post("/analyze", json={"text": "很好"})
    assert good.status_code == 200 and good.get_json()["label"] == "positive"
    metrics = client.get("/metrics").text
    assert 'sentiguard_rejected_total{code="empty_text"}' in metrics


# --- one renderer, one shape, in every Flask app --------------------------------------


def public_app(tmp_path: Path) -> tuple[Flask, dict[str, str]]:
    app = create_app(make_settings(), fallback=FakeFallback(), log=ListLog(), start_poller=False)
    gateway_of(app).close()  # no poller was started; nothing to route to
    return app, {}


def control_app(tmp_path: Path) -> tuple[Flask, dict[str, str]]:
    public = create_app(
        make_settings(**{"service.run_dir": str(tmp_path)}),
        fallback=FakeFallback(),
        log=ListLog(),
        start_poller=False,
    )
    gateway = gateway_of(public)
    gateway.close()
    secret = control.new_secret(gateway.settings)
    app = create_control_app(gateway.settings, gateway.state, gateway.log)
    return app, {control.SECRET_HEADER: secret}


def worker_app(tmp_path: Path) -> tuple[Flask, dict[str, str]]:
    # The worker's app in-process, before any model loaded: no torch needed.
    return create_worker_app(WorkerState(make_settings(), 0, ListLog())), {}


def assert_error_shape(response: TestResponse, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"]
    assert body["error"]["code"] == code and body["error"]["message"]


@pytest.mark.parametrize("make", [public_app, control_app, worker_app])
def test_every_app_renders_every_error_in_the_one_shape(
    make: Callable[[Path], tuple[Flask, dict[str, str]]], tmp_path: Path
) -> None:
    app, headers = make(tmp_path)

    def ours() -> str:
        raise BadRequest("a message that says what to send", code="made_up")

    def boom() -> str:
        raise RuntimeError("secret detail")

    app.add_url_rule("/_test/ours", view_func=ours)
    app.add_url_rule("/_test/boom", view_func=boom)
    client = app.test_client()
    assert_error_shape(client.get("/_test/ours", headers=headers), 400, "made_up")
    assert_error_shape(client.get("/no/such/route", headers=headers), 404, "not_found")
    wrong_method = client.delete("/_test/ours", headers=headers)
    assert_error_shape(wrong_method, 405, "method_not_allowed")
    assert "GET" in wrong_method.headers["Allow"]
    unexpected = client.get("/_test/boom", headers=headers)
    assert_error_shape(unexpected, 500, "internal_error")
    assert "secret detail" not in unexpected.get_json()["error"]["message"]
    assert "RuntimeError" in unexpected.get_json()["error"]["message"]


def test_the_worker_answers_with_the_gateways_codes(tmp_path: Path) -> None:
    state = WorkerState(make_settings(**LIMITS), 0, ListLog(), secret="s")
    client = create_worker_app(state).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer s"
    assert_error_shape(client.post("/predict", json={"texts": ["好"]}), 503, "loading")
    state.model, state.ready = cast(Any, SimpleNamespace(version="v", name="m")), True
    for body, code in [
        ({"texts": ["好", ""]}, "empty_text"),
        ({"texts": ["好", 3]}, "not_a_string"),
        ({"texts": ["好"] * 4}, "too_many_texts"),
        ({"texts": []}, "bad_texts"),
        ({"text": "好"}, "missing_text"),
    ]:
        assert_error_shape(client.post("/predict", json=body), 400, code)
    assert_error_shape(client.post("/predict", data=b"{"), 400, "invalid_json")

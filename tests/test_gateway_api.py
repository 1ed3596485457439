"""The gateway's public API: answer shape, health/ready/status, openapi, metrics, request ids,
access log, API key rule, web UI, control socket; then the real process over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from sentiguard.errors import ExitCode, SettingsError
from sentiguard.gateway import app as app_module
from sentiguard.gateway import create_app
from sentiguard.gateway.app import STATIC_DIR, gateway_of
from sentiguard.gateway.control_app import create_control_app
from sentiguard.runtime import control
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import ROOT
from tests.gateway_helpers import (
    FakeFallback,
    FakeWorker,
    free_port_block,
    gateway_with_workers,
    make_settings,
    make_unchecked_settings,
    wait_for,
)

RESULT_KEYS = [
    "text",
    "label",
    "label_zh",
    "score",
    "scores",
    "model",
    "model_version",
    "truncated",
    "degraded",
    "reason",
    "latency_ms",
]


def test_single_answer_has_every_design_field_in_order() -> None:
    with gateway_with_workers(1) as (app, _gw, _workers, _fb, _log):
        body = app.test_client().post("/analyze", json={"text": "服务很好"}).get_json()
        assert list(body) == RESULT_KEYS
        assert body["text"] == "服务很好"
        assert (body["label"], body["label_zh"]) == ("positive", "正面")
        assert body["scores"] == {"positive": 0.9, "negative": pytest.approx(0.1)}
        assert body["score"] == 0.9
        assert body["truncated"] is False
        assert isinstance(body["latency_ms"], float) and body["latency_ms"] >= 0


def test_batch_answer_is_results_in_input_order_with_truncation_per_text() -> None:
    with gateway_with_workers(1) as (app, _gw, _workers, _fb, _log):
        texts = ["差", "好" * 101, "一般般吧"]
        body = app.test_client().post("/analyze", json={"texts": texts}).get_json()
        assert list(body) == ["results"]
        assert [r["text"] for r in body["results"]] == texts
        assert [r["truncated"] for r in body["results"]] == [False, True, False]
        assert [r["label_zh"] for r in body["results"]] == ["负面", "正面", "负面"]
        assert all(list(r) == RESULT_KEYS for r in body["results"])


def test_health_ready_status_answer_from_held_state() -> None:
    with gateway_with_workers(2) as (app, gw, workers, _fb, _log):
        client = app.test_client()
        assert client.get("/health").get_json() == {"status": "ok", "reasons": []}
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.get_json()["primary_ready"] is True
        status = client.get("/status").get_json()
        assert list(status) == ["workers", "fallback", "watchdog", "gateways", "programs"]
        first = status["workers"][0]
        for key in ("name", "pid", "port", "state", "ready", "rss_mb", "uss_mb"):
            assert key in first
        for key in ("restarts", "breaker", "in_flight"):
            assert key in first
        assert (first["name"], first["pid"], first["port"]) == ("primary_0", 1000, workers[0].port)
        assert (first["state"], first["breaker"], first["in_flight"]) == ("ready", "closed", 0)
        assert status["fallback"]["capacity"] == 64 and status["fallback"]["in_use"] == 0
        assert status["watchdog"]["stale"] is True

        # Both workers gone: still 200 (the fallback answers), but degraded and why.
        for worker in gw.state.pool.workers:
            gw.state.pool.mark_not_ready(worker, "unreachable")
        health = client.get("/health").get_json()
        assert health["status"] == "degraded"
        assert any("no primary worker is ready" in r for r in health["reasons"])
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.get_json()["primary_ready"] is False


def test_watchdog_report_shows_in_status_and_goes_stale() -> None:
    with gateway_with_workers(1) as (app, gw, _workers, _fb, _log):
        limits = {"memory_limit_mb": 1200}
        gw.state.record_watchdog({"pid": 77, "limits": limits, "decisions": [{"event": "x"}]})
        worker = gw.state.pool.workers[0]
        gw.state.pool.apply_report(
            worker,
            {"drain": False, "state": "ready", "rss_mb": 300.5, "uss_mb": 250.0,
             "restarts": {"crash": 2, "memory": 1}},
        )  # fmt: skip
        status = app.test_client().get("/status").get_json()
        assert status["watchdog"]["pid"] == 77 and status["watchdog"]["limits"] == limits
        assert status["watchdog"]["stale"] is False
        w = status["workers"][0]
        assert (w["rss_mb"], w["uss_mb"], w["restarts"]) == (
            300.5,
            250.0,
            {"crash": 2, "memory": 1},
        )
        assert gw.state.watchdog.received_at is not None
        gw.state.watchdog.received_at -= 60  # as if it went silent a minute ago
        assert app.test_client().get("/status").get_json()["watchdog"]["stale"] is True
        reasons = app.test_client().get("/health").get_json()["reasons"]
        assert any("watchdog has not reported" in r for r in reasons)


def test_openapi_describes_every_public_route(tmp_path: Path) -> None:
    with gateway_with_workers(1) as (app, _gw, _workers, _fb, _log):
        spec = app.test_client().get("/openapi.json").get_json()
        documented = set(spec["paths"])
        served = set()
        for rule in app.url_map.iter_rules():
            path = rule.rule.replace("<path:filename>", "{file}")
            served.add(path)
            assert path in documented, f"{rule.rule} is not in /openapi.json"
            for method in (rule.methods or set()) - {"HEAD"}:  # OPTIONS is documented too
                assert method.lower() in spec["paths"][path], f"{method} {rule.rule}"
        assert documented == served, "/openapi.json documents a route the app does not serve"
        texts = spec["paths"]["/analyze"]["post"]["requestBody"]["content"]["application/json"]
        assert texts["schema"]["oneOf"][1]["properties"]["texts"]["maxItems"] == 256


def test_metrics_count_requests_by_model_and_reason_and_show_workers() -> None:
    with gateway_with_workers(1) as (app, gw, _workers, _fb, _log):
        client = app.test_client()
        client.post("/analyze", json={"text": "好"})
        client.post("/analyze", json={"texts": ["好", "差"]})
        gw.state.pool.apply_report(gw.state.pool.workers[0], {"drain": True, "uss_mb": 100.0})
        client.post("/analyze", json={"text": "好"})
        text = client.get("/metrics").text
        assert 'sentiguard_requests_total{model="primary",reason="none"} 2.0' in text
        assert 'sentiguard_requests_total{model="fallback",reason="primary_down"} 1.0' in text
        assert 'sentiguard_texts_total{model="primary"} 3.0' in text
        assert 'sentiguard_request_latency_seconds_bucket{le="5.0",model="primary"} 2.0' in text
        assert 'sentiguard_worker_draining{worker="primary_0"} 1.0' in text
        assert 'sentiguard_worker_uss_bytes{worker="primary_0"} 1.048576e+08' in text
        assert "sentiguard_fallback_capacity 64.0" in text


def test_metrics_registry_is_per_app() -> None:
    with gateway_with_workers(1) as (app_a, _a, _w, _f, _l):
        app_a.test_client().post("/analyze", json={"text": "好"})
        with gateway_with_workers(1) as (app_b, _b, _w2, _f2, _l2):
            text = app_b.test_client().get("/metrics").text
            assert "sentiguard_requests_total{" not in text


def test_request_id_is_echoed_or_made_and_access_log_has_one_line_without_text() -> None:
    with gateway_with_workers(1) as (app, _gw, _workers, _fb, log):
        client = app.test_client()
        echoed = client.post(
            "/analyze", json={"text": "秘密的评论"}, headers={"X-Request-ID": "abc-1"}
        )
        assert echoed.headers["X-Request-ID"] == "abc-1"
        made = client.post("/analyze", json={"text": "好"}, headers={"X-Request-ID": "bad id <x>"})
        assert made.headers["X-Request-ID"] not in ("", "bad id <x>")
        lines = log.events("access")
        assert len(lines) == 2
        first = lines[0]
        assert first["request_id"] == "abc-1" and first["status"] == 200
        assert (first["method"], first["path"], first["model"], first["reason"]) == (
            "POST",
            "/analyze",
            "primary",
            None,
        )
        assert (first["n_texts"], first["text_chars"]) == (1, 5)
        assert "秘密" not in json.dumps(lines, ensure_ascii=False)
        client.get("/nope")
        assert log.events("access")[-1]["status"] == 404


def test_access_log_carries_text_only_when_configured() -> None:
    with gateway_with_workers(1, **{"gateway.log_text": True}) as (app, _gw, _w, _fb, log):
        app.test_client().post("/analyze", json={"text": "秘密的评论"})
        assert log.events("access")[0]["texts"] == ["秘密的评论"]


# --- API key ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_public_bind_without_key_refuses_with_how_to_set_one(host: str) -> None:
    with pytest.raises(SettingsError, match="SENTIGUARD_GATEWAY_API_KEY"):
        create_app(make_settings(**{"gateway.host": host}), fallback=FakeFallback())


@pytest.mark.parametrize(
    "overrides",
    [
        {"gateway.host": "127.0.0.1"},
        {"gateway.host": "localhost"},
        {"gateway.host": "::1"},
        {"gateway.host": "0.0.0.0", "gateway.api_key": "k"},
        {"gateway.host": "0.0.0.0", "gateway.allow_public_without_key": True},
    ],
)
def test_loopback_keyed_or_opted_out_binds(overrides: dict[str, Any]) -> None:
    # No SettingsError: the app is built for that bind address, and it serves.
    app = create_app(make_settings(**overrides), fallback=FakeFallback(), start_poller=False)
    try:
        assert gateway_of(app).settings.gateway.host == overrides["gateway.host"]
        assert app.test_client().get("/health").status_code == 200
        key = overrides.get("gateway.api_key")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        answer = app.test_client().post("/analyze", json={"text": "好"}, headers=headers)
        assert answer.status_code == 200 and answer.get_json()["model"] == "fallback"
    finally:
        gateway_of(app).close()


def test_api_key_guards_the_api_but_not_probes_or_the_ui() -> None:
    with gateway_with_workers(1, **{"gateway.api_key": "s3cret"}) as (app, _gw, _w, _fb, _log):
        client = app.test_client()
        for method, path in (("post", "/analyze"), ("get", "/status"), ("get", "/metrics")):
            response = getattr(client, method)(path, json={"text": "好"})
            assert response.status_code == 401, path
            assert response.get_json()["error"]["code"] == "unauthorized"
            assert "Bearer" in response.get_json()["error"]["message"]
            wrong = getattr(client, method)(path, json={"text": "好"}, headers={"X-API-Key": "x"})
            assert wrong.status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/analyze", json={"text": "好"}, headers=good).status_code == 200
        assert client.get("/status", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200
        for path in ("/health", "/ready", "/", "/openapi.json"):
            with client.get(path) as response:
                assert response.status_code == 200, path


# --- web UI -------------------------------------------------------------------------------


def test_root_serves_the_web_ui_and_static_files() -> None:
    index = STATIC_DIR / "index.html"
    assert index.is_file(), "the web UI files are missing from sentiguard/gateway/static/"
    with gateway_with_workers(1) as (app, _gw, _w, _fb, _log):
        client = app.test_client()
        with client.get("/") as page:
            assert page.status_code == 200 and page.mimetype == "text/html"
            assert page.data == index.read_bytes()
        for name in ("app.js", "style.css"):
            with client.get(f"/static/{name}") as static:
                assert static.status_code == 200
                assert static.data == (STATIC_DIR / name).read_bytes()
        missing = client.get("/static/no-such-file.js")
        assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
        assert client.get("/static/../app.py").status_code == 404


def test_root_serves_a_placeholder_without_the_ui_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "STATIC_DIR", tmp_path)
    with gateway_with_workers(1) as (app, _gw, _w, _fb, _log):
        page = app.test_client().get("/")
        assert page.status_code == 200 and b"/openapi.json" in page.data


# --- control socket app -------------------------------------------------------------------


@pytest.fixture
def control_setup(tmp_path: Path) -> Iterator[tuple[Flask, Any, str]]:
    with gateway_with_workers(2, **{"service.run_dir": str(tmp_path)}) as (_app, gw, *_):
        secret = control.new_secret(gw.settings)
        yield create_control_app(gw.settings, gw.state, gw.log), gw, secret


def test_control_needs_the_secret(control_setup: tuple[Flask, Any, str]) -> None:
    app, _gw, secret = control_setup
    client = app.test_client()
    for headers in ({}, {control.SECRET_HEADER: "wrong"}):
        response = client.put("/control/workers/primary_0", json={"drain": True}, headers=headers)
        assert response.status_code == 403
        assert response.get_json()["error"]["code"] == "forbidden"
    ok = client.put(
        "/control/workers/primary_0", json={"drain": False}, headers={control.SECRET_HEADER: secret}
    )
    assert ok.status_code == 200


def test_control_drain_answers_in_flight_and_watchdog_report_lands(
    control_setup: tuple[Flask, Any, str],
) -> None:
    app, gw, secret = control_setup
    client = app.test_client()
    headers = {control.SECRET_HEADER: secret}
    body = {"drain": True, "state": "recycling", "reason": "memory", "pid": 1000,
            "rss_mb": 900.0, "restarts": {"memory": 1}, "parked": False}  # fmt: skip
    gw.state.pool.workers[0].in_flight = 3
    answer = client.put("/control/workers/primary_0", json=body, headers=headers).get_json()
    assert answer == {"name": "primary_0", "in_flight": 3, "drain": True}
    gw.state.pool.workers[0].in_flight = 0
    assert gw.state.pool.snapshot()[0]["state"] == "recycling"
    assert gw.log.events("worker_drain")[0]["worker"] == "primary_0"
    missing = client.put("/control/workers/primary_9", json=body, headers=headers)
    assert (
        missing.status_code == 404
        and "primary_0, primary_1" in missing.get_json()["error"]["message"]
    )
    report = {"pid": 5, "limits": {"memory_limit_mb": 900}, "decisions": []}
    assert client.put("/control/watchdog", json=report, headers=headers).status_code == 200
    assert gw.state.status()["watchdog"]["limits"] == {"memory_limit_mb": 900}


# --- the real process over real HTTP ------------------------------------------------------


GATEWAY_CMD = [sys.executable, "-m", "sentiguard.gateway"]
# Few threads for a light test process; the capacities stay below them, as the settings
# rules require (a gateway thread per admitted request, so overload is shed, not queued).
FEW_THREADS = {
    "gateway.threads": 8,
    "gateway.max_in_flight_per_worker": 2,
    "gateway.fallback_capacity": 4,
}


def gateway_env(**overrides: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIGUARD_")}
    # Unchecked: a test may hand the process settings it must refuse.
    env.update(make_unchecked_settings(**overrides).as_env())
    return env


def call(port: int, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


class GatewayProcess:
    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.port = free_port_block(1)
        self.overrides = {
            "gateway.port": self.port,
            "service.run_dir": str(tmp_path / "run"),
            "service.log_dir": str(tmp_path / "logs"),
            **overrides,
        }
        self.settings = make_unchecked_settings(**self.overrides)
        self.out = (tmp_path / "gateway.out").open("w+")
        self.proc = subprocess.Popen(
            GATEWAY_CMD,
            env=gateway_env(**self.overrides),
            cwd=ROOT,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"gateway exited:\n{self.output()}"
            try:
                return call(self.port, "GET", "/ready", timeout=1.0)[0] == 200
            except OSError:
                return False

        wait_for(up, timeout_s, "the gateway's /ready")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.out.close()


@pytest.fixture
def fake_primary(tmp_path: Path) -> Iterator[FakeWorker]:
    # The secret the gateway process under test reads (its run_dir is tmp_path / "run").
    worker = FakeWorker(free_port_block(1), pid=os.getpid(), secret=tmp_path / "run" / "secret")
    yield worker
    worker.close()


@pytest.mark.integration
def test_public_bind_without_key_exits_with_config_error(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path, **{"gateway.host": "0.0.0.0"})
    try:
        assert gateway.proc.wait(60) == ExitCode.CONFIG_ERROR
        assert "SENTIGUARD_GATEWAY_API_KEY" in gateway.output()
    finally:
        gateway.close()


@pytest.mark.integration
def test_real_gateway_process_routes_serves_control_socket_and_drains_on_sigterm(
    tmp_path: Path, fake_primary: FakeWorker
) -> None:
    gateway = GatewayProcess(
        tmp_path,
        **{
            "primary.base_port": fake_primary.port,
            "primary.workers": 1,
            "gateway.deadline_ms": 10000,
            **FEW_THREADS,
        },
    )
    try:
        gateway.wait_ready()
        wait_for(lambda: call(gateway.port, "GET", "/status")[1]["workers"][0]["ready"])
        status, body = call(gateway.port, "POST", "/analyze", {"text": "很好"})
        assert (status, body["model"], body["label"]) == (200, "primary", "positive")

        sock = RunDir(gateway.settings).control_socket
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        client = control.ControlClient(gateway.settings)
        code, answer = client.request("PUT", "/control/workers/primary_0", {"drain": True})
        assert (code, answer["drain"]) == (200, True)
        body = call(gateway.port, "POST", "/analyze", {"text": "很好"})[1]
        assert (body["model"], body["reason"]) == ("fallback", "primary_down")
        client.request("PUT", "/control/workers/primary_0", {"drain": False})
        assert call(gateway.port, "PUT", "/control/workers/primary_0", {"drain": True})[0] == 404

        # SIGTERM with a request in flight: it still gets its answer, then the process exits.
        fake_primary.mode, fake_primary.delay_s = "slow", 2.0
        result: dict[str, Any] = {}
        slow = threading.Thread(
            target=lambda: result.update(r=call(gateway.port, "POST", "/analyze", {"text": "好"}))
        )
        slow.start()
        wait_for(lambda: fake_primary.in_flight == 1, what="the slow request at the worker")
        gateway.proc.send_signal(signal.SIGTERM)
        slow.join(30)
        assert result["r"][0] == 200 and result["r"][1]["model"] == "primary"
        assert gateway.proc.wait(30) == 0
        assert '"event":"gateway_stopped"' in gateway.output()
        assert not sock.exists()
    finally:
        gateway.close()


def _primary_model_ready() -> bool:
    return (ROOT / "models" / "primary" / "manifest.json").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_real_primary_worker_through_real_gateway(tmp_path: Path) -> None:
    if not _primary_model_ready():
        pytest.fail("models/primary is missing: run `sentiguard train primary` (make install)")
    base = free_port_block(1)
    settings = {
        "primary.base_port": base,
        "primary.workers": 1,
        "service.run_dir": str(tmp_path / "run"),
        **FEW_THREADS,
    }
    control.new_secret(make_unchecked_settings(**settings))  # as `up` does before any worker
    worker = subprocess.Popen(
        [sys.executable, "-m", "sentiguard.primary", "--index", "0"],
        env=gateway_env(**settings),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    gateway = GatewayProcess(tmp_path, **settings)
    try:
        gateway.wait_ready()

        def primary_ready() -> bool:
            assert worker.poll() is None, "the primary worker exited"
            return bool(call(gateway.port, "GET", "/status")[1]["workers"][0]["ready"])

        wait_for(primary_ready, 240, "the real primary worker to pass /ready")
        status, body = call(
            gateway.port, "POST", "/analyze", {"text": "这家店的菜非常好吃，服务也很周到"}
        )
        assert (status, body["model"], body["degraded"]) == (200, "primary", False)
        assert body["label"] in ("positive", "negative") and body["model_version"]
        assert call(gateway.port, "GET", "/status")[1]["workers"][0]["pid"] == worker.pid

        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        status, body = call(gateway.port, "POST", "/analyze", {"text": "太难吃了"})
        assert status == 200 and body["model"] == "fallback"
        assert body["reason"] in ("primary_error", "primary_down")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        gateway.close()

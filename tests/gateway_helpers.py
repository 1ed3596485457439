"""Test doubles for the gateway: a fake primary worker over real HTTP, and a fake fallback.

`FakeWorker` speaks the worker contract of docs/internals.md (`/ready`, `/predict`,
`/health`) on a loopback port and can be told to be slow, fail, answer nonsense, or refuse
connections, so routing, breaker, deadline and shedding are tested over real sockets.
Given the per-up secret, it proves itself in /ready and refuses /predict without the
bearer, as a real worker does; without one it is a stranger on the port.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flask import Flask

from sentiguard import settings as settings_mod
from sentiguard.chaos.ports import free_port_block
from sentiguard.gateway.app import Gateway, create_app, gateway_of
from sentiguard.logs import EventLog
from sentiguard.runtime import control, trust
from sentiguard.runtime.endpoints import worker_name


def p_for(text: str) -> float:
    """The fakes' 'model': 好 is positive."""
    return 0.9 if "好" in text else 0.1


class FakeFallback:
    """Fallback double; `gate` (when set up) blocks predictions until released."""

    version = "fake-fallback-1"

    def __init__(self) -> None:
        self.calls = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Semaphore(0)

    def predict_proba(self, texts: list[str]) -> list[float]:
        self.calls += 1
        self.entered.release()
        if self.gate is not None:
            self.gate.wait(10)
        return [0.8 if "好" in t else 0.2 for t in texts]


class FakeWorker:
    """A primary worker double on 127.0.0.1:`port`. Set `mode` to change its behaviour:

    ok | slow (sleeps `delay_s` in /predict) | hung (sleeps `delay_s` in every route) |
    error (500) | garbage (200, wrong shape) | nan (200, NaN probabilities) |
    drop (closes the connection, no answer) | loading (/ready 503) |
    expired (504 deadline_passed, as a worker that dropped work whose time ran out).
    `predict_headers` keeps the headers of each /predict (X-Deadline-Ms, ...).
    `refuse()` closes the port; `serve()` opens it again.

    `secret` (a value, or a file read at each request): it answers a challenge in /ready
    with the proof for `name` and answers /predict only with the bearer (401 otherwise),
    as a real worker does. Without it (None), /ready carries no proof: a stranger.
    `ready_auth` keeps the Authorization header of each /ready request.
    """

    def __init__(
        self,
        port: int,
        pid: int = 4242,
        secret: str | Path | None = None,
        name: str = worker_name(0),
    ) -> None:
        self.port = port
        self.pid = pid
        self.secret = secret
        self.name = name
        self.ready_auth: list[str | None] = []
        self.predict_headers: list[dict[str, str]] = []
        self.unauthorized = 0
        self.mode = "ok"
        self.delay_s = 0.0
        self.predicts = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.release = threading.Event()  # ends a "slow" sleep early
        self._server: ThreadingHTTPServer | None = None
        self.serve()

    def serve(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes; with Nagle on, the body waits for the
            # client's delayed ACK (~40 ms a request).
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if fake.mode == "hung":
                    fake.release.wait(fake.delay_s)
                if self.path == "/ready":
                    fake.ready_auth.append(self.headers.get("Authorization"))
                    if fake.mode == "loading":
                        self._send(503, {"ready": False, "reason": "loading"})
                    else:
                        body = {"ready": True, "pid": fake.pid, "model_version": "fake-primary"}
                        self._send(200, body | fake.identity(self.headers))
                else:
                    self._send(404, {"error": {"code": "not_found", "message": self.path}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                secret = fake.secret_value()
                if secret is not None and not trust.bearer_ok(
                    self.headers.get("Authorization"), secret
                ):
                    fake.unauthorized += 1
                    self._send(401, {"error": {"code": "unauthorized", "message": "no bearer"}})
                    return
                with fake._lock:
                    fake.predict_headers.append(dict(self.headers.items()))
                    fake.predicts += 1
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if fake.mode in ("slow", "hung"):
                        fake.release.wait(fake.delay_s)
                    if fake.mode == "drop":
                        self.close_connection = True  # like a process killed mid-request
                    elif fake.mode == "error":
                        self._send(500, {"error": {"code": "boom", "message": "fake failure"}})
                    elif fake.mode == "expired":
                        error = {"code": "deadline_passed", "message": "the deadline passed"}
                        self._send(504, {"error": error})
                    elif fake.mode == "garbage":
                        self._send(200, {"results": []})
                    elif fake.mode == "nan":
                        nan = {"p_positive": float("nan"), "truncated": False}
                        results = [nan] * len(body["texts"])
                        self._send(200, {"results": results, "model_version": "fake-primary"})
                    else:
                        results = [
                            {"p_positive": p_for(t), "truncated": len(t) > 100}
                            for t in body["texts"]
                        ]
                        self._send(
                            200,
                            {"results": results, "model_version": "fake-primary", "pid": fake.pid},
                        )
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _send(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the gateway gave up (deadline) and closed the connection

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server

    def secret_value(self) -> str | None:
        if isinstance(self.secret, Path):
            return self.secret.read_text().strip() if self.secret.exists() else None
        return self.secret

    def identity(self, headers: Any) -> dict[str, Any]:
        """`name` and `proof` for the request's challenge, as a real worker's /ready."""
        nonce = headers.get(trust.CHALLENGE_HEADER)
        secret = self.secret_value()
        if secret is None or nonce is None:
            return {"name": self.name}
        return {"name": self.name, "proof": trust.proof(secret, nonce, self.name)}

    def refuse(self) -> None:
        """Close the port: connections are refused, like a killed worker's."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.release.set()
        self.refuse()


def make_settings(**overrides: Any) -> settings_mod.Settings:
    """Built-in defaults plus `overrides` ({"gateway.deadline_ms": 500}); no env, no file."""
    return settings_mod.load(None, environ={}, overrides=overrides)


def make_unchecked_settings(**overrides: Any) -> settings_mod.Settings:
    """Like `make_settings`, without the rules between settings: settings the service
    would refuse, to test that it does."""
    return settings_mod.load(None, environ={}, overrides=overrides, check=False)


class ListLog(EventLog):
    """An EventLog that keeps (event, fields) pairs instead of printing them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [f for e, f in self.lines if e == name]


@contextlib.contextmanager
def gateway_with_workers(
    n_workers: int = 2, **overrides: Any
) -> Iterator[tuple[Flask, Gateway, list[FakeWorker], FakeFallback, ListLog]]:
    """An app routing to `n_workers` fake workers, polled ready once; cleaned up after.

    The run directory (a temporary one unless `service.run_dir` is given) gets a per-up
    secret, which the fakes hold, as `sentiguard up` and real workers do.
    """
    with contextlib.ExitStack() as stack:
        if "service.run_dir" not in overrides:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sentiguard-gw-"))
            overrides = {**overrides, "service.run_dir": tmp}
        yield from _gateway_with_workers(n_workers, overrides)


def _gateway_with_workers(
    n_workers: int, overrides: dict[str, Any]
) -> Iterator[tuple[Flask, Gateway, list[FakeWorker], FakeFallback, ListLog]]:
    base = free_port_block(n_workers)
    settings = make_settings(
        **{"primary.base_port": base, "primary.workers": n_workers, **overrides}
    )
    secret = trust.load_secret(settings) or control.new_secret(settings)
    workers = [
        FakeWorker(base + i, pid=1000 + i, secret=secret, name=worker_name(i))
        for i in range(n_workers)
    ]
    fallback = FakeFallback()
    log = ListLog()
    app = create_app(settings, fallback=fallback, log=log, start_poller=False)
    gateway = gateway_of(app)
    try:
        poll_all(gateway)
        yield app, gateway, workers, fallback, log
    finally:
        gateway.close()
        for w in workers:
            w.close()


def poll_all(gateway: Gateway) -> None:
    for worker in gateway.state.pool.workers:
        gateway.poller.poll_once(worker)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll `condition` until true or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.02)


def assert_second_is_overloaded(app: Any, worker: FakeWorker) -> None:
    """With `worker` held slow: a first /analyze reaches it; while it is there, a second is
    answered by the fallback at once as `overloaded`; the first then gets the primary's."""
    worker.mode, worker.delay_s = "slow", 10.0
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_analyze, app)
        wait_for(lambda: worker.in_flight == 1, what="first request at the worker")
        body = _analyze(app).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "overloaded")
        worker.release.set()
        assert first.result().get_json()["model"] == "primary"
    assert worker.max_in_flight == 1


def _analyze(app: Any) -> Any:
    return app.test_client().post("/analyze", json={"text": "这家店很好"})

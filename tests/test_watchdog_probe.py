"""/health, /live and /ready probes against a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sentiguard.runtime.endpoints import probe_ready
from sentiguard.watchdog.limits import MemoryProfile
from sentiguard.watchdog.probe import probe_health, probe_live


class Worker:
    """What the fake worker answers next: (status, body, delay in seconds)."""

    def __init__(self) -> None:
        self.status = 200
        self.body: dict[str, Any] = {"status": "ok", "probe_ms": 3.0, "pid": 1}
        self.release = threading.Event()
        self.hang = False


@pytest.fixture
def worker() -> Iterator[tuple[Worker, int]]:
    state = Worker()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if state.hang:
                state.release.wait(10)
            data = json.dumps(state.body).encode()
            self.send_response(state.status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


def test_ok_probe_uses_the_workers_own_inference_time(worker: tuple[Worker, int]) -> None:
    state, port = worker
    state.body["probe_ms"] = 700.0  # the model itself is slow: over a 500 ms budget
    result = probe_health(port, 2.0)
    assert result.ok and result.probe_ms == 700.0  # not the round trip
    assert result.rtt_ms is not None


def test_wrong_answer_is_a_failed_probe(worker: tuple[Worker, int]) -> None:
    state, port = worker
    state.status = 503
    result = probe_health(port, 2.0)
    assert not result.ok and result.error == "status_503"


def test_a_hung_worker_times_out(worker: tuple[Worker, int]) -> None:
    state, port = worker
    state.hang = True
    result = probe_health(port, 0.2)
    assert not result.ok and result.timed_out


def test_nobody_listening_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = probe_health(port, 0.5)
    assert not result.ok and result.error == "refused"
    assert not probe_ready(port, 0.5).ready


def test_ready_reads_version_and_pid(worker: tuple[Worker, int]) -> None:
    state, port = worker
    state.body = {"ready": True, "pid": 42, "model_version": "sbert-abc"}
    r = probe_ready(port, 1.0)
    assert r.ready and r.pid == 42 and r.model_version == "sbert-abc"
    state.status, state.body = 503, {"ready": False, "reason": "loading"}
    r = probe_ready(port, 1.0)
    assert not r.ready and r.error == "loading"


def test_a_wrong_answer_is_named(worker: tuple[Worker, int]) -> None:
    state, port = worker
    state.status, state.body = 503, {"status": "wrong_answer", "probe_ms": 4.0}
    result = probe_health(port, 2.0)
    assert not result.ok and result.error == "wrong_answer"


def test_live_reads_progress_and_the_memory_measure(worker: tuple[Worker, int]) -> None:
    state, port = worker
    state.body = {
        "pid": 7,
        "ready": True,
        "progress": {"batches": 12, "texts": 90, "queued": 2, "running": 1,
                     "oldest_running_ms": 340.5, "last_batch_ago_ms": 20.0,
                     "batch_ms": 300.0, "batch_ms_max": 900.0, "dropped": 1},
        "memory": {"ready_mb": 360.0, "peak_mb": 412.5, "batch": 32, "tokens": 128},
    }  # fmt: skip
    live = probe_live(port, 1.0)
    assert live.ok and live.pid == 7
    assert live.progress is not None and live.progress.has_work
    assert live.progress.batch_ms_max == 900.0 and live.progress.oldest_running_ms == 340.5
    assert live.memory == MemoryProfile(360.0, 412.5, 32, 128)
    state.body = {"pid": 7, "progress": {"batches": 0, "queued": 0, "running": 0}, "memory": None}
    live = probe_live(port, 1.0)
    assert live.progress is not None and not live.progress.has_work and live.memory is None


def test_live_without_the_route_is_alive_without_counters(worker: tuple[Worker, int]) -> None:
    state, port = worker
    state.status, state.body = 404, {"error": {"code": "not_found"}}
    live = probe_live(port, 1.0)
    assert live.ok and live.progress is None  # an older worker: its HTTP thread answers


def test_live_of_a_stopped_worker_times_out(worker: tuple[Worker, int]) -> None:
    state, port = worker
    state.hang = True
    live = probe_live(port, 0.2)
    assert not live.ok and live.timed_out

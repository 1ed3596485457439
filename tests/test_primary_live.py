"""A real worker process: GET /live, X-Deadline-Ms on /predict, the start-up memory
measure, and the stall fault (issue 10: liveness by progress, deadlines end to end).

One worker with one batch lane serves every test in file order, so a request queues
behind the batch running, as it does behind a base-size model's seconds-long batch.
Every fault a test injects is lifted in its `finally`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sentiguard import settings
from sentiguard.chaos.client import wait_until
from sentiguard.primary.probe import PROBE
from tests.primary_helpers import EMBEDDED_MODEL, Worker, start_worker, wait_ready

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (EMBEDDED_MODEL / "configuration.json").exists(),
        reason="the embedded model is not built yet: run `sentiguard train primary`",
    ),
]
# How long a batch has run when a test times /live beside it: the test compares the two.
AGED_MS = 1500
TEXT = "这个手机非常好用，质量很好，我很满意，推荐购买！"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    env = {"SENTIGUARD_FAULTS_ENABLED": "1", "SENTIGUARD_PRIMARY_BATCH_LANES": "1"}
    w = start_worker(tmp_path_factory.mktemp("primary-live"), env)
    try:
        wait_ready(w)
        yield w
    finally:
        w.stop()


def live(worker: Worker) -> dict[str, Any]:
    r = requests.get(worker.url + "/live", timeout=5)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def progress(worker: Worker) -> dict[str, Any]:
    answer: dict[str, Any] = live(worker)["progress"]
    return answer


def fault(worker: Worker, body: dict[str, Any]) -> None:
    r = requests.post(worker.url + "/_fault", json=body, headers=worker.auth, timeout=10)
    assert r.status_code == 200, r.text


def predict(worker: Worker, texts: list[str], deadline_ms: str | None = None) -> requests.Response:
    headers = dict(worker.auth)
    if deadline_ms is not None:
        headers["X-Deadline-Ms"] = deadline_ms
    return requests.post(
        worker.url + "/predict", json={"texts": texts}, headers=headers, timeout=60
    )


def in_background(worker: Worker, texts: list[str]) -> tuple[threading.Thread, dict[str, Any]]:
    """POST /predict from a thread; once it started a batch, return (thread, outcome)."""
    outcome: dict[str, Any] = {}
    before = progress(worker)["running"]

    def send() -> None:
        outcome["response"] = predict(worker, texts)

    thread = threading.Thread(target=send)
    thread.start()
    wait_until(lambda: progress(worker)["running"] > before, 30, "its batch to start")
    return thread, outcome


def aged(worker: Worker, ms: float) -> None:
    """Wait until the batch running has run `ms`."""
    wait_until(
        lambda: (progress(worker)["oldest_running_ms"] or 0) >= ms, 30, f"a batch {ms} ms old"
    )


def settle(worker: Worker) -> dict[str, Any]:
    """Progress once no batch runs and nothing waits."""
    wait_until(
        lambda: (p := progress(worker))["running"] == 0 and p["queued"] == 0,
        30,
        "the worker to go idle",
    )
    return progress(worker)


def test_memory_is_measured_at_full_load_before_ready(worker: Worker) -> None:
    body = live(worker)
    assert body["pid"] == worker.proc.pid and body["ready"] is True
    assert body["draining"] is False and body["in_flight"] == 0
    assert body["rss_mb"] > 0 and body["uss_mb"] > 0
    memory = body["memory"]
    batch = settings.BY_NAME["primary.max_batch_size"].default
    tokens = settings.BY_NAME["primary.sequence_length"].default
    assert memory["batch"] == batch and memory["tokens"] == tokens and memory["lanes"] == 1
    assert 0 < memory["ready_mb"] <= memory["peak_mb"]
    # The full-load batch went through the real batched path before ready: the probe's
    # texts and one full batch on the one lane, at least.
    assert body["progress"]["batches"] >= 2
    assert body["progress"]["texts"] >= len(PROBE) + batch
    ready = worker.event("worker_ready")
    assert ready["memory"] == memory and ready["memory_measure_ms"] > 0
    health = requests.get(worker.url + "/health", timeout=10).json()
    assert health["progress"]["batches"] >= body["progress"]["batches"] + 1  # its own probe


def test_live_answers_from_counters_while_a_batch_runs(worker: Worker) -> None:
    before = settle(worker)
    fault(worker, {"kind": "slow", "ms": 5000})
    try:
        thread, outcome = in_background(worker, [TEXT])
        aged(worker, AGED_MS)
        started = time.perf_counter()
        during = progress(worker)
        took_ms = (time.perf_counter() - started) * 1000
        # Answered while the batch still ran (a /live that waited for it would show it
        # finished), in a fraction of the time that batch had been running.
        assert during["running"] == 1 and during["batches"] == before["batches"]
        assert took_ms < during["oldest_running_ms"]
        thread.join(60)
    finally:
        fault(worker, {"kind": "slow", "ms": 0})
    assert outcome["response"].status_code == 200
    after = settle(worker)
    assert after["batches"] == before["batches"] + 1 and after["texts"] == before["texts"] + 1
    assert after["batch_ms_max"] >= during["oldest_running_ms"]
    assert after["last_batch_ago_ms"] is not None


def test_a_short_deadline_behind_a_long_batch_is_dropped_unrun(worker: Worker) -> None:
    before = settle(worker)
    fault(worker, {"kind": "slow", "ms": 3000})
    try:
        thread, outcome = in_background(worker, [TEXT])
        late = predict(worker, ["晚到的一", "晚到的二", "晚到的三"], deadline_ms="200")
        assert progress(worker)["running"] == 1  # the caller heard before the batch ended
        thread.join(60)
    finally:
        fault(worker, {"kind": "slow", "ms": 0})
    assert late.status_code == 504, late.text
    error = late.json()["error"]
    assert error["code"] == "deadline_passed" and "X-Deadline-Ms" in error["message"]
    assert outcome["response"].status_code == 200
    wait_until(
        lambda: progress(worker)["dropped"] == before["dropped"] + 1, 30, "the drop to count"
    )
    after = settle(worker)
    # Only the first request's one text was computed; the late three never were.
    assert after["batches"] == before["batches"] + 1 and after["texts"] == before["texts"] + 1


def test_no_time_left_is_a_504_without_queueing(worker: Worker) -> None:
    before = settle(worker)
    r = predict(worker, [TEXT], deadline_ms="0")
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_passed"
    after = settle(worker)
    assert after["dropped"] == before["dropped"] + 1 and after["texts"] == before["texts"]


def test_a_deadline_with_time_to_spare_is_answered(worker: Worker) -> None:
    r = predict(worker, [TEXT], deadline_ms="20000")
    assert r.status_code == 200 and r.json()["results"][0]["p_positive"] > 0.5


# "²" is a digit to str.isdigit() and int() refuses it: only ASCII digits count.
@pytest.mark.parametrize("header", ["soon", "-5", "1.5", "1e3", "²", "+12", "99999999999", ""])
def test_a_malformed_deadline_is_a_400_naming_the_header(worker: Worker, header: str) -> None:
    before = settle(worker)
    r = predict(worker, [TEXT], deadline_ms=header)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_deadline" and "X-Deadline-Ms" in error["message"]
    assert settle(worker)["texts"] == before["texts"]


def test_stall_takes_work_and_makes_no_progress_while_http_answers(worker: Worker) -> None:
    before = settle(worker)
    fault(worker, {"kind": "stall", "seconds": 120})
    try:
        thread, outcome = in_background(worker, [TEXT])
        aged(worker, AGED_MS)
        started = time.perf_counter()
        ready = requests.get(worker.url + "/ready", timeout=5)
        stalled = progress(worker)
        took_ms = (time.perf_counter() - started) * 1000
        assert ready.status_code == 200  # the HTTP threads answer...
        assert took_ms < stalled["oldest_running_ms"]  # ...at once, next to the stalled batch
        assert stalled["batches"] == before["batches"] and stalled["running"] == 1
        assert thread.is_alive()
    finally:
        fault(worker, {"kind": "stall", "seconds": 0})  # also frees the stalled pass
    thread.join(30)
    assert outcome["response"].status_code == 200
    assert settle(worker)["batches"] == before["batches"] + 1


def test_a_stall_needs_its_seconds(worker: Worker) -> None:
    bodies: list[dict[str, Any]] = [{"kind": "stall"}, {"kind": "stall", "seconds": -1}]
    for body in bodies:
        r = requests.post(worker.url + "/_fault", json=body, headers=worker.auth, timeout=10)
        assert r.status_code == 400 and "seconds" in r.json()["error"]["message"]

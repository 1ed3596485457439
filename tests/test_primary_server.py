"""The batcher in-process, and one real worker process shared by the HTTP tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from sentiguard import settings
from sentiguard.chaos.client import wait_until
from sentiguard.primary.batcher import Batcher, BatcherStopped
from sentiguard.primary.probe import PROBE
from sentiguard.runtime import trust
from tests.primary_helpers import EMBEDDED_MODEL, Worker, start_worker, wait_ready

# --- the batcher, with a fake model ---------------------------------------------------


def echo(texts: list[str]) -> list[str]:
    time.sleep(0.005)  # long enough that concurrent requests pile up behind a batch
    return [f"answer:{t}" for t in texts]


class Held:
    """A fake `predict` that records its batches and keeps a batch holding `hold` (every
    batch, for None) running until `release()`: requests sent meanwhile wait in the queue."""

    def __init__(
        self,
        hold: str | None = "first",
        answer: Callable[[list[str]], list[str]] = list,
    ) -> None:
        self.hold, self.answer = hold, answer
        self.calls: list[list[str]] = []
        self._released = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls.append(texts)
        if self.hold is None or self.hold in texts:
            self._released.wait(5)
        return self.answer(texts)

    def release(self) -> None:
        self._released.set()


def queued(batcher: Batcher[str]) -> list[str]:
    """The first text of each request waiting in the batcher's queue, in queue order."""
    return [request.texts[0] for *_, request in list(batcher._queue.queue)]


def send_in_order(
    batcher: Batcher[str], model: Held, send: Callable[[str], object], names: list[str]
) -> list[threading.Thread]:
    """`send(name)` from a thread per name: the first starts the held batch, and each later
    one starts once the one before waits in the queue, so they queue in this order."""
    threads = []
    for name in names:
        threads.append(threading.Thread(target=send, args=(name,)))
        threads[-1].start()
        if len(threads) == 1:
            wait_until(lambda: model.calls, 5, "the first batch to start")
        else:

            def is_queued(text: str = name) -> bool:
                return text in queued(batcher)

            wait_until(is_queued, 5, name)
    return threads


@pytest.mark.parametrize("lanes", [1, 2])
def test_concurrent_requests_get_their_own_answers_in_order(lanes: int) -> None:
    batcher: Batcher[str] = Batcher(echo, max_batch_size=16, max_wait_ms=5, lanes=lanes).start()
    requests_ = [[f"r{i}-t{j}" for j in range(1 + i % 4)] for i in range(200)]
    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(batcher.submit, requests_))
    finally:
        batcher.stop(2)
    assert answers == [[f"answer:{t}" for t in texts] for texts in requests_]
    assert batcher.texts == sum(len(r) for r in requests_)
    assert batcher.batches < len(requests_) / 2  # coalesced, not one pass per request


def test_lanes_run_batches_at_the_same_time() -> None:
    both_running = threading.Barrier(2, timeout=5)

    def predict(texts: list[str]) -> list[str]:
        both_running.wait()  # breaks (BrokenBarrierError) unless a second batch runs too
        return texts

    batcher: Batcher[str] = Batcher(predict, max_batch_size=1, max_wait_ms=1, lanes=2).start()
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda t: batcher.submit([t], 10), ["a", "b"]))
    finally:
        batcher.stop(2)
    assert answers == [["a"], ["b"]]
    assert batcher.batches == 2


def test_stop_fails_what_no_lane_will_run() -> None:
    model = Held(hold=None)  # both lanes stay busy: later requests wait in the queue
    batcher: Batcher[str] = Batcher(model, max_batch_size=1, max_wait_ms=1, lanes=2).start()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, [t], 10) for t in "abcd"]
        wait_until(lambda: len(model.calls) == 2 and len(queued(batcher)) == 2, 5, "2 queued")
        stopper = threading.Thread(target=batcher.stop, args=(0.2,))
        stopper.start()
        stopper.join(5)
        model.release()
        outcomes: list[object] = []
        for f in futures:
            try:
                outcomes.append(f.result(5))
            except BatcherStopped:
                outcomes.append("stopped")
    assert outcomes.count("stopped") >= 1  # queued past the deadline: told, not lost
    assert all(o == "stopped" or o == [t] for o, t in zip(outcomes, "abcd", strict=True))


def test_a_batch_never_exceeds_max_batch_size() -> None:
    sizes: list[int] = []

    def record(texts: list[str]) -> list[str]:
        sizes.append(len(texts))
        return echo(texts)

    batcher: Batcher[str] = Batcher(record, max_batch_size=5, max_wait_ms=20).start()
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(batcher.submit, [["a", "b"]] * 40))
    finally:
        batcher.stop(2)
    assert max(sizes) <= 5 and sum(sizes) == 80


def test_an_error_reaches_only_the_callers_of_its_batch() -> None:
    def upper_unless_boom(texts: list[str]) -> list[str]:
        if "boom" in texts:
            raise ValueError("model exploded")
        return [t.upper() for t in texts]

    model = Held(answer=upper_unless_boom)
    batcher: Batcher[str] = Batcher(model, max_batch_size=2, max_wait_ms=50).start()
    results: dict[str, object] = {}

    def call(name: str) -> None:
        try:
            results[name] = batcher.submit([name], 5)
        except Exception as e:
            results[name] = e

    threads = send_in_order(batcher, model, call, ["first", "boom", "b", "c", "d"])
    model.release()
    for t in threads:
        t.join(5)
    batcher.stop(2)
    assert model.calls[1:] == [["boom", "b"], ["c", "d"]]
    assert isinstance(results["boom"], ValueError) and isinstance(results["b"], ValueError)
    assert results["first"] == ["FIRST"] and results["c"] == ["C"] and results["d"] == ["D"]


def test_an_urgent_request_goes_ahead_of_the_queue() -> None:
    """The /health probe waits for the batch in progress only, never for the queue."""
    model = Held()
    batcher: Batcher[str] = Batcher(model, max_batch_size=1, max_wait_ms=1).start()
    threads = send_in_order(
        batcher,
        model,
        lambda name: batcher.submit([name], 5, urgent=name == "probe"),
        ["first", "a", "b", "probe"],
    )
    model.release()
    for t in threads:
        t.join(5)
    batcher.stop(2)
    assert model.calls == [["first"], ["probe"], ["a"], ["b"]]


def test_a_stopped_batcher_refuses_new_work() -> None:
    batcher: Batcher[str] = Batcher(echo, max_batch_size=4, max_wait_ms=1).start()
    assert batcher.submit(["x"], 5) == ["answer:x"]
    batcher.stop(2)
    with pytest.raises(BatcherStopped):
        batcher.submit(["y"], 5)


# --- a real worker process ------------------------------------------------------------

(POSITIVE, _), (NEGATIVE, _) = PROBE


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    if not (EMBEDDED_MODEL / "configuration.json").exists():
        pytest.skip("the embedded model is not built yet: run `sentiguard train primary`")
    # Two batch lanes: every HTTP test below also covers batches running side by side.
    # float32 keeps an answer independent of its batch-mates (int8 scales per batch), which
    # the ordering test compares to 1e-4.
    env = {"SENTIGUARD_PRIMARY_BATCH_LANES": "2", "SENTIGUARD_PRIMARY_QUANTIZE": "none"}
    w = start_worker(tmp_path_factory.mktemp("primary-server"), env=env)
    try:
        wait_ready(w)
        yield w
    finally:
        w.stop()


def predict(worker: Worker, texts: list[str]) -> requests.Response:
    return requests.post(
        worker.url + "/predict", json={"texts": texts}, headers=worker.auth, timeout=30
    )


@pytest.mark.integration
def test_ready_names_the_serving_process_and_model(worker: Worker) -> None:
    body = requests.get(worker.url + "/ready", timeout=5).json()
    assert body["ready"] is True
    assert body["pid"] == worker.proc.pid  # the process started is the one serving
    # It yields the CPU to the gateway by primary.nice, relative to whoever started it.
    nice = settings.BY_NAME["primary.nice"].default
    assert psutil.Process(worker.proc.pid).nice() == min(psutil.Process().nice() + nice, 19)
    assert body["model_version"].startswith(f"{EMBEDDED_MODEL}@")
    ready = worker.event("worker_ready")
    assert ready["import_s"] > 0 and ready["load_s"] > 0 and ready["rss_mb"] > 0
    assert ready["batch_lanes"] == 2


@pytest.mark.integration
def test_predict_known_answers(worker: Worker) -> None:
    r = predict(worker, [POSITIVE, NEGATIVE])
    assert r.status_code == 200
    body = r.json()
    ps = [x["p_positive"] for x in body["results"]]
    assert ps[0] > 0.5 > ps[1]
    assert body["pid"] == worker.proc.pid


@pytest.mark.integration
def test_order_is_kept_under_concurrency(worker: Worker) -> None:
    # Alternate clearly positive and negative texts, each made distinct, so an answer
    # delivered to the wrong caller or slot shows up as a wrong label or value.
    texts = [
        f"第{i}次购买，" + (POSITIVE if i % 2 == 0 else NEGATIVE) + "。" * (i % 7)
        for i in range(60)
    ]
    alone = {t: predict(worker, [t]).json()["results"][0]["p_positive"] for t in texts[:12]}
    groups = [texts[i : i + 1 + i % 3] for i in range(len(texts))]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda g: predict(worker, g).json()["results"], groups))
    for group, results in zip(groups, answers, strict=True):
        assert len(results) == len(group)
        for text, result in zip(group, results, strict=True):
            assert (result["p_positive"] > 0.5) == (POSITIVE in text)
            if text in alone:
                assert result["p_positive"] == pytest.approx(alone[text], abs=1e-4)


@pytest.mark.integration
def test_health_runs_the_probe_and_reports_memory(worker: Worker) -> None:
    r = requests.get(worker.url + "/health", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["probe_ms"] > 0
    assert body["pid"] == worker.proc.pid
    assert 50 < body["rss_mb"] < 1200 and body["uss_mb"] > 0
    assert body["model"] == str(EMBEDDED_MODEL)
    assert body["model_version"].startswith(f"{EMBEDDED_MODEL}@")


@pytest.mark.integration
def test_faults_are_off_by_default(worker: Worker) -> None:
    r = requests.post(worker.url + "/_fault", json={"kind": "crash"}, timeout=5)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert worker.proc.poll() is None


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_json"),
        (b'{"text": "one"}', "missing_text"),
        (b'{"texts": []}', "bad_texts"),
        (b'{"texts": ["ok", ""]}', "empty_text"),
        (b'{"texts": ["ok", 3]}', "not_a_string"),
        (b'{"texts": ["ok", "\\ud800"]}', "invalid_utf8"),
    ],
)
def test_bad_input_is_a_400_with_the_error_shape(worker: Worker, body: bytes, code: str) -> None:
    r = requests.post(
        worker.url + "/predict",
        data=body,
        headers={"Content-Type": "application/json", **worker.auth},
        timeout=5,
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    if code in ("empty_text", "not_a_string", "invalid_utf8"):
        assert "texts[1]" in error["message"]


@pytest.mark.integration
def test_predict_needs_the_secret_of_this_up(worker: Worker) -> None:
    url, body = worker.url + "/predict", {"texts": [POSITIVE]}
    for headers in ({}, trust.bearer_headers("not-the-secret"), {"Authorization": "Basic eA=="}):
        r = requests.post(url, json=body, headers=headers, timeout=10)
        assert r.status_code == 401, headers
        error = r.json()["error"]
        assert error["code"] == "unauthorized"
        assert "Authorization: Bearer" in error["message"] and "secret" in error["message"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.post(url, json=body, headers=worker.auth, timeout=30).status_code == 200


@pytest.mark.integration
def test_ready_proves_the_worker_holds_the_secret(worker: Worker) -> None:
    assert worker.secret is not None
    nonce = trust.new_challenge()
    r = requests.get(worker.url + "/ready", headers={trust.CHALLENGE_HEADER: nonce}, timeout=5)
    body = r.json()
    assert r.status_code == 200 and body["name"] == "primary_0"  # open: no secret needed
    assert trust.proof_ok(worker.secret, nonce, "primary_0", body["proof"])
    assert not trust.proof_ok("another up's secret", nonce, "primary_0", body["proof"])
    assert not trust.proof_ok(worker.secret, nonce, "primary_1", body["proof"])
    assert not trust.proof_ok(worker.secret, trust.new_challenge(), "primary_0", body["proof"])
    # A malformed nonce is not signed; no nonce, no proof at all.
    bad = requests.get(worker.url + "/ready", headers={trust.CHALLENGE_HEADER: "x"}, timeout=5)
    assert bad.json()["proof"] is None and bad.json()["proof_error"] == "bad_challenge"
    assert "proof" not in requests.get(worker.url + "/ready", timeout=5).json()


@pytest.mark.integration
def test_a_worker_without_a_secret_serves_nobody(tmp_path: Path) -> None:
    w = start_worker(tmp_path, with_secret=False)
    try:
        wait_ready(w)
        assert "sentiguard up" in w.event("secret_missing")["fix"]
        nonce = trust.new_challenge()
        ready = requests.get(w.url + "/ready", headers={trust.CHALLENGE_HEADER: nonce}, timeout=5)
        assert ready.status_code == 200  # /health and /ready pass: the watchdog leaves it be
        assert ready.json()["proof"] is None and ready.json()["proof_error"] == "no_secret"
        for headers in ({}, trust.bearer_headers(""), trust.bearer_headers("guess")):
            r = requests.post(
                w.url + "/predict", json={"texts": ["好"]}, headers=headers, timeout=5
            )
            assert r.status_code == 401 and "sentiguard up" in r.json()["error"]["message"]
        assert w.proc.poll() is None
    finally:
        w.stop()


@pytest.mark.integration
def test_a_long_text_says_it_was_cut(worker: Worker) -> None:
    results = predict(worker, ["好" * 1000, "好"]).json()["results"]
    assert [r["truncated"] for r in results] == [True, False]


def test_port_in_use_fails_with_a_hint(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        w = start_worker(tmp_path, {"SENTIGUARD_PRIMARY_BASE_PORT": str(port)})
        try:
            assert w.wait_exit(60) == 1
        finally:
            w.stop()
    assert "primary.base_port" in w.event("port_in_use")["fix"]


def test_a_lone_client_does_not_wait_for_company() -> None:
    # With a one-minute max wait, a batcher that waited for more requests would time out
    # every submit below; without concurrency it must run each request at once.
    batcher: Batcher[str] = Batcher(echo, max_batch_size=8, max_wait_ms=60_000).start()
    try:
        for i in range(3):
            assert batcher.submit([f"t{i}"], 30) == [f"answer:t{i}"]
    finally:
        batcher.stop(2)

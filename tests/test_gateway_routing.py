"""Routing, breaker, deadline and shedding, against fake workers over real loopback HTTP."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sentiguard import settings as settings_mod
from sentiguard.gateway.breaker import TIMEOUT_FAILURES, Breaker, BreakerState
from sentiguard.runtime import control
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.trust import Secret
from tests.gateway_helpers import (
    assert_second_is_overloaded,
    gateway_with_workers,
    poll_all,
    wait_for,
)


def analyze(app: Any, text: str = "这家店很好", headers: dict[str, str] | None = None) -> Any:
    return app.test_client().post("/analyze", json={"text": text}, headers=headers or {})


# --- breaker, unit ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_first_connection_failure_and_half_opens_with_one_probe() -> None:
    clock = Clock()
    breaker = Breaker(open_s=2.0, clock=clock)
    assert breaker.allow()
    breaker.failure("refused", connection=True)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.now += 2.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow(), "the first request after open_s is the probe"
    assert not breaker.allow(), "only one probe at a time"
    breaker.failure("refused again")
    assert breaker.state is BreakerState.OPEN, "a failed probe opens it again"
    clock.now += 2.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_breaker_tolerates_isolated_timeouts_but_not_a_run_of_them() -> None:
    breaker = Breaker(open_s=2.0, clock=Clock())
    for _ in range(TIMEOUT_FAILURES - 1):
        breaker.failure("timeout")
    breaker.success()
    for _ in range(TIMEOUT_FAILURES - 1):
        breaker.failure("timeout")
    assert breaker.state is BreakerState.CLOSED
    breaker.failure("timeout")
    assert breaker.state is BreakerState.OPEN


# --- routing to the primary -----------------------------------------------------------------


def test_ready_worker_answers_with_primary_fields() -> None:
    with gateway_with_workers(1) as (app, _gw, workers, fallback, _log):
        body = analyze(app).get_json()
        assert body["model"] == "primary"
        assert body["model_version"] == "fake-primary"
        assert body["degraded"] is False and body["reason"] is None
        assert body["label"] == "positive"
        assert workers[0].predicts == 1 and fallback.calls == 0


def test_batch_goes_to_one_worker_in_one_predict_and_keeps_order() -> None:
    with gateway_with_workers(2) as (app, _gw, workers, _fb, _log):
        texts = ["好吃", "难吃", "很好", "太差了"]
        body = app.test_client().post("/analyze", json={"texts": texts}).get_json()
        assert [r["text"] for r in body["results"]] == texts
        assert [r["label"] for r in body["results"]] == [
            "positive",
            "negative",
            "positive",
            "negative",
        ]
        assert sum(w.predicts for w in workers) == 1


# --- local trust: the secret on /predict, the proof in /ready ----------------------------------


def test_predict_carries_the_secret_and_ready_polls_do_not() -> None:
    with gateway_with_workers(1) as (app, gw, workers, _fb, _log):
        assert analyze(app).get_json()["model"] == "primary"
        assert workers[0].predicts == 1 and workers[0].unauthorized == 0
        # /ready is open; the poller proves the worker instead of showing it the secret.
        assert workers[0].ready_auth and set(workers[0].ready_auth) == {None}
        gw.router.client.secret = Secret.fixed("stale")
        body = analyze(app).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "primary_error")
        assert workers[0].unauthorized == 1


@pytest.mark.parametrize("secret", [None, "another up's secret"], ids=["stranger", "other_up"])
def test_a_port_answering_without_our_proof_is_not_ready(secret: str | None) -> None:
    with gateway_with_workers(1) as (app, gw, workers, _fb, log):
        worker = gw.state.pool.workers[0]
        assert worker.ready
        workers[0].secret, workers[0].pid = secret, 666
        for _ in range(3):
            poll_all(gw)
        assert not worker.ready and worker.not_ready_reason == "not_ours"
        assert worker.pid == 1000, "nothing it said was taken in"
        [line] = log.events("worker_not_ours")  # once, not every poll
        assert line["port"] == workers[0].port and line["worker"] == "primary_0"
        assert line["answered"]["pid"] == 666
        assert line["answered"]["proof"] == ("missing" if secret is None else "wrong")
        body = analyze(app).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "primary_down")
        assert workers[0].predicts == 0
        # Our worker back on the port: ready again, and a later stranger is logged again.
        workers[0].secret = gw.poller.client.secret.value
        poll_all(gw)
        assert worker.ready and worker.pid == 666
        workers[0].secret = None
        poll_all(gw)
        assert len(log.events("worker_not_ours")) == 2


def test_the_secret_is_read_again_when_a_proof_fails(tmp_path: Path) -> None:
    run = {"service.run_dir": str(tmp_path)}
    with gateway_with_workers(1, **run) as (_app, gw, workers, _fb, log):
        assert gw.state.pool.workers[0].ready
        # A new secret under a running gateway (as a gateway started alone writes it after
        # its poller started): the first failed proof re-reads the file.
        fresh = settings_mod.load(None, environ={}, overrides=run)
        workers[0].secret = RunDir(fresh).secret
        control.new_secret(fresh)
        poll_all(gw)
        assert gw.state.pool.workers[0].ready and not log.events("worker_not_ours")
        assert analyze(_app).get_json()["model"] == "primary"


def test_least_outstanding_worker_gets_the_request() -> None:
    with gateway_with_workers(2, **{"gateway.deadline_ms": 5000}) as (app, gw, workers, _f, _l):
        for w in workers:
            w.mode, w.delay_s = "slow", 5.0
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(analyze, app) for _ in range(4)]
            wait_for(lambda: sum(w.in_flight for w in workers) == 4, what="4 requests in flight")
            assert [w.in_flight for w in workers] == [2, 2]
            for w in workers:
                w.release.set()
            assert all(f.result().get_json()["model"] == "primary" for f in futures)
        assert gw.state.pool.in_flight() == 0


def test_drained_worker_gets_no_new_requests() -> None:
    with gateway_with_workers(2) as (app, gw, workers, fallback, _log):
        pool = gw.state.pool
        pool.apply_report(pool.workers[0], {"drain": True, "state": "recycling"})
        for _ in range(6):
            assert analyze(app).get_json()["model"] == "primary"
        assert workers[0].predicts == 0 and workers[1].predicts == 6
        assert fallback.calls == 0
        pool.apply_report(pool.workers[1], {"drain": True, "state": "recycling"})
        body = analyze(app).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "primary_down")
        assert body["degraded"] is True


def test_no_ready_worker_means_fallback_with_primary_down() -> None:
    with gateway_with_workers(1) as (app, gw, workers, _fb, _log):
        workers[0].mode = "loading"
        poll_all(gw)
        body = analyze(app).get_json()
        assert (body["model"], body["reason"], body["degraded"]) == (
            "fallback",
            "primary_down",
            True,
        )
        assert body["model_version"] == "fake-fallback-1"
        assert workers[0].predicts == 0


def test_refused_connection_answers_from_fallback_opens_breaker_and_costs_nothing_after() -> None:
    with gateway_with_workers(1, **{"gateway.breaker_open_s": 2.0}) as (app, gw, workers, _f, _l):
        worker = gw.state.pool.workers[0]
        clock = Clock()
        worker.breaker.clock = clock
        workers[0].refuse()
        body = analyze(app).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "primary_error")
        assert worker.breaker.state is BreakerState.OPEN
        assert worker.ready is False, "a refused connection marks the worker not ready at once"
        # Back on its port: the poller sees it ready, same pid, breaker still open.
        workers[0].serve()
        poll_all(gw)
        assert worker.ready and worker.breaker.state is BreakerState.OPEN
        body = analyze(app).get_json()
        assert body["reason"] == "primary_down" and workers[0].predicts == 0
        # After breaker_open_s one probe goes through and closes it.
        clock.now += 2.0
        assert worker.breaker.state is BreakerState.HALF_OPEN
        assert analyze(app).get_json()["model"] == "primary"
        assert worker.breaker.state is BreakerState.CLOSED
        assert workers[0].predicts == 1


def test_refused_worker_is_skipped_for_the_other_in_the_same_request() -> None:
    with gateway_with_workers(2) as (app, _gw, workers, fallback, _log):
        workers[0].refuse()
        for _ in range(4):
            assert analyze(app).get_json()["model"] == "primary"
        assert workers[1].predicts == 4 and fallback.calls == 0


def test_connection_closed_without_answer_is_retried_on_the_other_worker() -> None:
    with gateway_with_workers(2) as (app, gw, workers, fallback, _log):
        workers[0].mode = "drop"
        for _ in range(4):
            assert analyze(app).get_json()["model"] == "primary"
        assert fallback.calls == 0 and workers[1].predicts == 4
        assert gw.state.pool.workers[0].breaker.state is BreakerState.OPEN


def test_new_worker_process_resets_its_breaker() -> None:
    with gateway_with_workers(1, **{"gateway.breaker_open_s": 60.0}) as (app, gw, workers, _f, _l):
        worker = gw.state.pool.workers[0]
        workers[0].refuse()
        analyze(app)
        assert worker.breaker.state is BreakerState.OPEN
        workers[0].pid += 1  # "restarted": a new process answers /ready
        workers[0].serve()
        poll_all(gw)
        assert worker.breaker.state is BreakerState.CLOSED
        assert analyze(app).get_json()["model"] == "primary"


def test_slow_worker_times_out_into_fallback_within_the_deadline() -> None:
    with gateway_with_workers(1, **{"gateway.deadline_ms": 300}) as (app, _gw, workers, _f, _l):
        workers[0].mode, workers[0].delay_s = "slow", 5.0
        body = analyze(app).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "primary_timeout")
        # Relative, not absolute: it gave up long before the worker would have answered.
        assert body["latency_ms"] < workers[0].delay_s * 1000 / 2


def test_client_deadline_header_shortens_the_wait() -> None:
    with gateway_with_workers(1, **{"gateway.deadline_ms": 20000}) as (app, _gw, workers, _f, _l):
        workers[0].mode, workers[0].delay_s = "slow", 10.0
        body = analyze(app, headers={"X-Deadline-Ms": "200"}).get_json()
        assert body["reason"] == "primary_timeout"
        assert body["latency_ms"] < 5000


def test_run_of_timeouts_opens_the_breaker() -> None:
    settings = {"gateway.deadline_ms": 100, "gateway.breaker_open_s": 60.0}
    with gateway_with_workers(1, **settings) as (app, gw, workers, _f, _log):
        workers[0].mode, workers[0].delay_s = "slow", 5.0
        for _ in range(TIMEOUT_FAILURES):
            assert analyze(app).get_json()["reason"] == "primary_timeout"
        assert gw.state.pool.workers[0].breaker.state is BreakerState.OPEN
        before = workers[0].predicts
        assert analyze(app).get_json()["reason"] == "primary_down"
        assert workers[0].predicts == before, "an open breaker sends nothing"


def test_worker_errors_and_broken_answers_are_primary_error() -> None:
    with gateway_with_workers(1) as (app, _gw, workers, _fb, log):
        for mode in ("error", "garbage", "nan"):
            workers[0].mode = mode
            body = analyze(app).get_json()
            assert (body["model"], body["reason"]) == ("fallback", "primary_error"), mode
        assert len(log.events("primary_failed")) == 3


def test_no_room_on_any_worker_is_overloaded() -> None:
    settings = {"gateway.max_in_flight_per_worker": 1, "gateway.deadline_ms": 10000}
    with gateway_with_workers(1, **settings) as (app, _gw, workers, _fb, _log):
        assert_second_is_overloaded(app, workers[0])


def test_full_fallback_sheds_with_503_retry_after_and_json_error() -> None:
    settings = {"gateway.fallback_capacity": 1, "gateway.retry_after_s": 3}
    with gateway_with_workers(1, **settings) as (app, gw, workers, fallback, log):
        workers[0].mode = "loading"
        poll_all(gw)
        fallback.gate = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(analyze, app)
            assert fallback.entered.acquire(timeout=10)
            shed = analyze(app)
            assert shed.status_code == 503
            assert shed.headers["Retry-After"] == "3"
            assert shed.get_json()["error"]["code"] == "overloaded"
            last = log.events("access")[-1]
            assert (last["status"], last["reason"]) == (503, "shed")
            fallback.gate.set()
            assert first.result().status_code == 200
        assert gw.state.admission.in_use == 0
        assert "sentiguard_shed_total 1.0" in app.test_client().get("/metrics").text


def test_watchdog_dead_report_trips_breaker_and_parked_shows_in_health() -> None:
    with gateway_with_workers(2) as (app, gw, workers, _fb, _log):
        pool = gw.state.pool
        report = {"drain": False, "state": "parked", "parked": True, "reason": "model corrupt"}
        pool.apply_report(pool.workers[0], report)
        assert pool.workers[0].breaker.state is BreakerState.OPEN
        for _ in range(3):
            assert analyze(app).get_json()["model"] == "primary"
        assert workers[0].predicts == 0
        health = app.test_client().get("/health").get_json()
        assert health["status"] == "degraded"
        assert any("parked" in r and "model corrupt" in r for r in health["reasons"])


# --- readiness poller -------------------------------------------------------------------------


def test_poller_marks_a_hung_worker_not_ready_after_repeated_timeouts() -> None:
    with gateway_with_workers(1) as (app, gw, workers, _fb, log):
        worker = gw.state.pool.workers[0]
        assert log.events("worker_ready") == [
            {"worker": "primary_0", "pid": 1000, "model_version": "fake-primary"}
        ]
        workers[0].mode, workers[0].delay_s = "hung", 30.0
        gw.poller.poll_once(worker)
        assert worker.ready, "one slow poll is not enough to call it hung"
        gw.poller.poll_once(worker)
        assert not worker.ready and worker.not_ready_reason == "/ready timeout"
        assert log.events("worker_not_ready")[0]["reason"] == "/ready timeout"
        body = analyze(app).get_json()
        assert body["reason"] == "primary_down" and workers[0].predicts == 0


def test_poller_records_pid_version_and_memory_of_the_worker() -> None:
    with gateway_with_workers(1) as (_app, gw, workers, _fb, _log):
        workers[0].pid = os.getpid()  # a real process, so memory can be sampled
        worker = gw.state.pool.workers[0]
        gw.poller.poll_once(worker)
        assert (worker.pid, worker.model_version) == (os.getpid(), "fake-primary")
        assert worker.rss_mb is not None and worker.rss_mb > 0


def test_status_and_health_answer_while_a_worker_hangs() -> None:
    settings = {"gateway.deadline_ms": 20000}
    with gateway_with_workers(1, **settings) as (app, _gw, workers, _fb, _log):
        workers[0].mode, workers[0].delay_s = "hung", 20.0
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(analyze, app)
            wait_for(lambda: workers[0].in_flight == 1, what="a request stuck at the worker")
            client = app.test_client()
            for path in ("/health", "/ready", "/status"):
                assert client.get(path).status_code == 200
            status = client.get("/status").get_json()
            assert status["workers"][0]["in_flight"] == 1
            assert not stuck.done(), "those answers did not wait for the hung worker"
            workers[0].release.set()
            assert stuck.result().status_code == 200


def test_a_bug_on_the_worker_path_answers_from_the_fallback_and_frees_the_probe() -> None:
    with gateway_with_workers(1) as (app, gw, _workers, _fb, _log):
        worker = gw.state.pool.workers[0]
        clock = Clock()
        worker.breaker.clock = clock
        worker.breaker.trip("test")
        clock.now += 10.0  # half-open: the next request is the probe

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("bug")

        real = gw.router.client.request
        gw.router.client.request = broken  # type: ignore[method-assign]
        body = analyze(app).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "primary_error")
        assert worker.breaker.state is BreakerState.OPEN, "the failed probe reopened it"
        gw.router.client.request = real  # type: ignore[method-assign]
        clock.now += 10.0
        assert analyze(app).get_json()["model"] == "primary", "the probe slot was given back"

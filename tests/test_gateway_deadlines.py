"""Deadlines end to end and admission by measured capacity, against fake workers over HTTP.

The gateway sends each worker the time left (`X-Deadline-Ms`), reads a worker's 504
`deadline_passed` as a timeout, never holds a client-shortened timeout against the worker,
answers from the fallback at once (`overloaded`) what a worker could not answer in the
time left, and shows each worker's learnt limit as `capacity` in /status and /metrics.
"""

from __future__ import annotations

import re
from typing import Any

from sentiguard.gateway.breaker import TIMEOUT_FAILURES, BreakerState
from sentiguard.gateway.siblings import merge
from tests.gateway_helpers import assert_second_is_overloaded, gateway_with_workers


def analyze(app: Any, deadline_ms: int | None = None) -> Any:
    headers = {} if deadline_ms is None else {"X-Deadline-Ms": str(deadline_ms)}
    return app.test_client().post("/analyze", json={"text": "这家店很好"}, headers=headers)


def test_each_predict_carries_the_time_left_in_whole_ms() -> None:
    with gateway_with_workers(1, **{"gateway.deadline_ms": 1500}) as (app, _gw, workers, _f, _l):
        assert analyze(app).get_json()["model"] == "primary"
        assert analyze(app, deadline_ms=400).get_json()["model"] == "primary"
        sent = [h.get("X-Deadline-Ms") for h in workers[0].predict_headers]
        assert len(sent) == 2 and all(v is not None and re.fullmatch(r"[0-9]+", v) for v in sent)
        full, short = (int(v) for v in sent if v is not None)
        # What is left of the deadline after the fallback's reserve: below what was asked,
        # and the client's shorter deadline reaches the worker.
        assert 1 <= full < 1500 and 1 <= short < 400 < full


def test_a_worker_504_deadline_passed_is_a_timeout_not_an_error() -> None:
    with gateway_with_workers(1) as (app, _gw, workers, _f, log):
        workers[0].mode = "expired"
        body = analyze(app).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "primary_timeout")
        (failed,) = log.events("primary_failed")
        assert failed["kind"] == "timeout"


def test_client_shortened_timeouts_leave_the_breaker_closed_and_the_limit_alone() -> None:
    settings = {"gateway.deadline_ms": 5000, "gateway.breaker_open_s": 60.0}
    with gateway_with_workers(1, **settings) as (app, gw, workers, _f, log):
        worker = gw.state.pool.workers[0]
        limit = worker.limiter.limit
        workers[0].mode, workers[0].delay_s = "slow", 5.0
        for _ in range(TIMEOUT_FAILURES + 2):
            body = analyze(app, deadline_ms=150).get_json()
            assert (body["model"], body["reason"]) == ("fallback", "primary_timeout")
        workers[0].mode = "expired"  # the worker's own word for the same thing
        for _ in range(TIMEOUT_FAILURES + 2):
            assert analyze(app, deadline_ms=150).get_json()["reason"] == "primary_timeout"
        assert worker.breaker.state is BreakerState.CLOSED
        assert worker.limiter.limit == limit
        assert log.events("primary_failed") == []
        workers[0].mode = "ok"
        assert analyze(app).get_json()["model"] == "primary"


def test_timeouts_on_the_gateways_own_deadline_still_open_the_breaker() -> None:
    settings = {"gateway.deadline_ms": 150, "gateway.breaker_open_s": 60.0}
    with gateway_with_workers(1, **settings) as (app, gw, workers, _f, _l):
        workers[0].mode, workers[0].delay_s = "slow", 5.0
        for _ in range(TIMEOUT_FAILURES):
            # Asking for the configured deadline, or more, is not shortening it.
            assert analyze(app, deadline_ms=9000).get_json()["reason"] == "primary_timeout"
        worker = gw.state.pool.workers[0]
        assert worker.breaker.state is BreakerState.OPEN
        assert worker.limiter.limit < gw.state.pool.max_in_flight, "timeouts lower the limit"


def test_a_client_shortened_timeout_gives_back_a_half_open_probe() -> None:
    settings = {"gateway.deadline_ms": 5000, "gateway.breaker_open_s": 60.0}
    with gateway_with_workers(1, **settings) as (app, gw, workers, _f, _l):
        worker = gw.state.pool.workers[0]
        worker.breaker.trip("test")
        worker.breaker._opened_at -= 60.0  # cooled down: the next request is the probe
        workers[0].mode, workers[0].delay_s = "slow", 5.0
        assert analyze(app, deadline_ms=150).get_json()["reason"] == "primary_timeout"
        assert worker.breaker.would_allow(), "the probe slot is free for the next request"
        workers[0].mode = "ok"
        workers[0].release.set()
        assert analyze(app).get_json()["model"] == "primary"
        assert worker.breaker.state is BreakerState.CLOSED


def test_less_time_left_than_the_expected_latency_goes_to_the_fallback_at_once() -> None:
    with gateway_with_workers(1, **{"gateway.deadline_ms": 5000}) as (app, gw, workers, _f, _l):
        workers[0].mode, workers[0].delay_s = "slow", 0.4
        for _ in range(3):  # the worker answers, in 0.4 s each
            assert analyze(app).get_json()["model"] == "primary"
        expected = gw.state.pool.workers[0].limiter.expected_latency_s()
        assert expected is not None and expected >= 0.4
        before = workers[0].predicts
        # 300 ms asked: less than 0.4 s left even before the fallback's reserve.
        body = analyze(app, deadline_ms=300).get_json()
        assert (body["model"], body["reason"]) == ("fallback", "overloaded")
        assert workers[0].predicts == before, "the worker was not asked"
        assert body["latency_ms"] < expected * 1000 / 2, "answered at once, not at the deadline"
        worker = gw.state.pool.workers[0]
        assert worker.breaker.state is BreakerState.CLOSED and worker.in_flight == 0
        assert analyze(app).get_json()["model"] == "primary", "a longer deadline still goes"


def test_no_room_under_the_learnt_limit_is_overloaded_below_the_ceiling() -> None:
    settings = {"gateway.max_in_flight_per_worker": 4, "gateway.deadline_ms": 10000}
    with gateway_with_workers(1, **settings) as (app, gw, workers, _f, _l):
        worker = gw.state.pool.workers[0]
        worker.limiter._limit = 1.0  # as if it had learnt that one at a time is its capacity
        assert_second_is_overloaded(app, workers[0])


def test_capacity_per_worker_in_status_and_metrics_follows_the_limit() -> None:
    settings = {"gateway.max_in_flight_per_worker": 6, "gateway.admission": "aimd"}
    with gateway_with_workers(2, **settings) as (app, gw, _workers, _f, _l):
        client = app.test_client()
        status = client.get("/status").get_json()
        assert [w["capacity"] for w in status["workers"]] == [6, 6]
        gw.state.pool.workers[1].limiter.sample(9.0, 6, dropped=True)  # 6 x 0.9 -> 5
        status = client.get("/status").get_json()
        assert [w["capacity"] for w in status["workers"]] == [6, 5]
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'sentiguard_worker_capacity{worker="primary_0"} 6.0' in metrics
        assert 'sentiguard_worker_capacity{worker="primary_1"} 5.0' in metrics
        # Another gateway process's own limits add up into the service's.
        sibling = {"gateway": {"index": 1}, "workers": {"primary_0": {"capacity": 3}}}
        merged = merge(status, [sibling])
        assert [w["capacity"] for w in merged["workers"]] == [9, 5]


def test_memory_limit_reported_by_the_watchdog_shows_per_worker() -> None:
    with gateway_with_workers(1) as (app, gw, _workers, _f, _l):
        worker = gw.state.pool.workers[0]
        assert "memory_limit_mb" not in app.test_client().get("/status").get_json()["workers"][0]
        source = "auto: ready RSS 410 MB + 300 MB for the largest batch"
        gw.state.pool.apply_report(worker, {"memory_limit_mb": 710, "memory_limit_source": source})
        (shown,) = app.test_client().get("/status").get_json()["workers"]
        assert (shown["memory_limit_mb"], shown["memory_limit_source"]) == (710.0, source)


def test_a_new_worker_process_starts_its_limit_afresh() -> None:
    with gateway_with_workers(1) as (_app, gw, workers, _f, _l):
        worker = gw.state.pool.workers[0]
        worker.limiter.sample(0.3, 1)
        worker.limiter.sample(9.0, 8, dropped=True)
        assert worker.limiter.expected_latency_s() is not None
        workers[0].pid += 1
        gw.poller.poll_once(worker)
        assert worker.limiter.expected_latency_s() is None
        assert worker.limiter.limit == gw.state.pool.max_in_flight

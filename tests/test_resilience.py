"""The "Must show" of issue 4, against the real processes under the real supervisord.

2 workers on the embedded models, faults enabled, bounded closed-loop traffic to 127.0.0.1.
One shared service (`healthy_service`) carries every fault that heals; the broken model gets
its own. The scenario drivers live in sentiguard/chaos/scenarios.py, which bench/chaos.py
runs longer to produce the numbers in docs/resilience.md.

Timings are held to the service's own promises on the service's own clocks (an answer's
latency_ms against gateway.deadline_ms; supervisord's start time of a replacement against
the watchdog's probe rounds or the backoff it logged), never to a figure of this machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sentiguard.chaos import scenarios as chaos
from sentiguard.chaos.client import http_request
from sentiguard.chaos.service import ServiceHandle, start_service
from sentiguard.chaos.timeline import Result
from sentiguard.settings import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REASONS = {"primary_down", "overloaded", "primary_timeout", "primary_error"}
JSON = {"Content-Type": "application/json"}


def check_answers(result: Result) -> None:
    """Every answer says which model gave it; a fallback answer always says why."""
    for s in result.samples:
        if s.status != 200:
            continue
        assert s.model in ("primary", "fallback"), s
        if s.model == "fallback":
            assert s.reason in REASONS, s
        else:
            assert s.reason is None, s


# (name, method, content type, body, expected status, expected error code or None)
BAD_INPUTS: list[tuple[str, str, str | None, bytes, int, str | None]] = [
    ("empty text", "POST", "application/json", b'{"text": ""}', 400, "empty_text"),
    ("blank text", "POST", "application/json", b'{"text": "   "}', 400, "empty_text"),
    ("number text", "POST", "application/json", b'{"text": 5}', 400, "not_a_string"),
    ("null text", "POST", "application/json", b'{"text": null}', 400, "not_a_string"),
    ("no text", "POST", "application/json", b'{"review": "hi"}', 400, None),
    ("not an object", "POST", "application/json", b'["hi"]', 400, None),
    ("invalid json", "POST", "application/json", b'{"text": "hi"', 400, "invalid_json"),
    ("invalid utf-8", "POST", "application/json", b'{"text": "\xff\xfe"}', 400, "invalid_utf8"),
    ("form body", "POST", "application/x-www-form-urlencoded", b"text=hi", 415, None),
    ("no content type", "POST", None, b'{"text": "hi"}', 415, None),
    (
        "deep json",
        "POST",
        "application/json",
        b'{"text": ' + b"[" * 200 + b"]" * 200 + b"}",
        400,
        "json_too_deep",
    ),
    ("empty batch", "POST", "application/json", b'{"texts": []}', 400, None),
    ("bad batch item", "POST", "application/json", b'{"texts": ["ok", 3]}', 400, "not_a_string"),
]


def test_bad_input_gets_its_4xx_and_the_service_stays_healthy(
    healthy_service: ServiceHandle,
) -> None:
    g = healthy_service.settings.gateway
    cases = [
        *BAD_INPUTS,
        (
            "text too long",
            "POST",
            "application/json",
            json.dumps({"text": "好" * (g.max_text_chars + 1)}).encode(),
            400,
            "text_too_long",
        ),
        (
            "too many texts",
            "POST",
            "application/json",
            json.dumps({"texts": ["好"] * (g.max_texts + 1)}).encode(),
            400,
            "too_many_texts",
        ),
        (
            "body too large",
            "POST",
            "application/json",
            b'{"text": "' + b"a" * (g.max_body_bytes + 1) + b'"}',
            413,
            None,
        ),
    ]
    for name, method, ctype, body, status, code in cases:
        headers = {"Content-Type": ctype} if ctype else {}
        r = http_request(healthy_service.port, method, "/analyze", body, headers)
        assert r.status == status, f"{name}: {r.status} {r.body}"
        assert isinstance(r.body, dict) and set(r.body) == {"error"}, f"{name}: {r.body}"
        assert set(r.body["error"]) >= {"code", "message"}, name
        if code:
            assert r.body["error"]["code"] == code, f"{name}: {r.body}"
    batch = http_request(healthy_service.port, "POST", "/analyze", b'{"texts": ["ok", ""]}', JSON)
    assert "texts[1]" in batch.body["error"]["message"]  # the index of the bad item
    health = healthy_service.get("/health")
    assert health.status == 200 and health.body["status"] == "ok", health.body
    assert healthy_service.analyze("这家店很好吃").body["model"] == "primary"


def test_overload_sheds_with_retry_after_and_keeps_the_primary_serving(
    healthy_service: ServiceHandle,
) -> None:
    result = chaos.overload(healthy_service, clients=64, duration_s=20.0)
    summary = json.dumps(result.summary(), default=str)
    print(summary)  # pytest -rP shows the numbers docs/resilience.md reports
    statuses = result.statuses
    assert set(statuses) <= {200, 503}, summary
    shed = [s for s in result.samples if s.status == 503]
    assert all(s.retry_after for s in shed), "a 503 without Retry-After"
    assert statuses[200] > 0.5 * len(result.samples), summary  # most are answered
    # The gateway's promise on its own clock: an answer's latency_ms stays within the
    # deadline (plus 100 ms for the fallback's own work past its reserve). Client-side
    # latency adds this machine's client threads and queueing on two shared cores; the
    # issue's 500 ms target is measured and reported by bench/chaos.py (resilience.md).
    deadline_ms = healthy_service.settings.gateway.deadline_ms
    answered = [s for s in result.samples if s.status == 200]
    assert all(s.server_ms is not None for s in answered), "an answer without latency_ms"
    p99_ms = result.server_quantile(0.99)
    assert p99_ms is not None and p99_ms <= deadline_ms + 100, summary
    check_answers(result)
    # The primary keeps serving while the fallback takes the rest. Its rate under overload
    # shares two cores with 64 client threads and ~700 fallback answers/s (CI measured 0.49
    # of the 8-client baseline), so the floor catches a primary shut out or starved, not
    # CPU share; bench/chaos.py reports the ratio itself.
    assert result.extra["primary_ratio"] is not None and result.extra["primary_ratio"] >= 0.25, (
        summary
    )
    assert result.by_model.get("fallback/overloaded", 0) > 0, summary


def test_leak_is_drained_and_recycled_without_the_fallback(
    healthy_service: ServiceHandle,
) -> None:
    result = chaos.leak(healthy_service, index=0, clients=4)
    summary = json.dumps(result.summary(), default=str)
    print(summary)  # pytest -rP shows the numbers docs/resilience.md reports
    assert not result.failures, summary
    assert not [s for s in result.samples if s.model == "fallback"], summary
    (fault,) = result.faults
    assert fault.detect_s is not None and fault.recover_s is not None, summary
    decisions = [
        json.loads(line)
        for line in (healthy_service.log_dir / "watchdog.jsonl").read_text().splitlines()
    ]
    mine = [d for d in decisions if d.get("worker") == "primary_0" and d.get("pid") == fault.pid]
    assert any("memory" in str(d.get("reason", "")) for d in mine), mine[-5:]


def test_hang_is_replaced_in_the_watchdogs_probe_rounds_and_no_answer_passes_its_deadline(
    healthy_service: ServiceHandle,
) -> None:
    result = chaos.hang(healthy_service, index=1, clients=8)
    summary = json.dumps(result.summary(), default=str)
    print(summary)  # pytest -rP shows the numbers docs/resilience.md reports
    (fault,) = result.faults
    assert fault.replaced_s is not None, summary
    # The watchdog decided "hang" itself (not a crash or a memory recycle) and supervisord
    # started the replacement within the watchdog's own promise: probe_failures rounds of
    # interval + probe timeout, and a round to act (defaults: 8 s; 5 s typical, see
    # docs/resilience.md). Both on the service's clocks, against the SIGSTOP's moment.
    budget = result.extra["hang_budget_s"]
    assert result.extra["hang_decided_s"] is not None, summary
    assert result.extra["hang_decided_s"] <= budget, summary
    assert result.extra["replaced_by_supervisord_s"] <= budget, summary
    assert not result.failures, summary
    late = result.answered_over(result.extra["deadline_ms"] + 100)
    assert not late, f"{len(late)} answers past the deadline + 100 ms: {late[:3]}"
    check_answers(result)


def test_kill_a_random_worker_every_5s_loses_no_request(healthy_service: ServiceHandle) -> None:
    result = chaos.kill(healthy_service, duration_s=30.0, every_s=5.0, clients=16)
    summary = json.dumps(result.summary(), default=str)
    print(summary)  # pytest -rP shows the numbers docs/resilience.md reports
    assert result.extra["kills"] >= 5, summary
    assert not result.failures, summary
    check_answers(result)
    assert (
        result.by_model.get("fallback/primary_down", 0)
        + result.by_model.get("fallback/overloaded", 0)
        + result.by_model.get("fallback/primary_error", 0)
        > 0
    ), summary
    assert healthy_service.all_ready()
    # Backed off, not parked: the watchdog announced a backoff for the last-killed worker
    # (capped by backoff_max_s) and supervisord started it again within that backoff plus
    # two watchdog rounds (notice the death, then start), on supervisord's own clock. Its
    # readiness after that is the model's load time (last_load_s, reported, not held).
    w = healthy_service.settings.watchdog
    backoff = result.extra["last_kill_backoff_s"]
    assert backoff is not None and backoff <= w.backoff_max_s, summary
    assert result.extra["restarted_after_last_kill_s"] <= backoff + 2 * w.interval_s, summary


def test_broken_model_starts_on_the_fallback_and_is_not_hammered(tmp_path: Path) -> None:
    chaos.corrupt_copy(ROOT / "models" / "primary", tmp_path / "model")
    svc = start_service(
        tmp_path / "service",
        workers=2,
        overrides={"primary.model": str(tmp_path / "model")},
        wait=False,
    )
    try:
        result = chaos.broken_model(svc, window_s=20.0)
    finally:
        _, orphans = svc.stop()
    summary = json.dumps(result.summary(), default=str)
    print(summary)  # pytest -rP shows the numbers docs/resilience.md reports
    # The first request once the gateway says ready is answered, by the fallback: nothing
    # waits for a primary that cannot load (the time is reported, first_answer_s).
    first = result.extra["first_answer"]
    assert first["status"] == 200, summary
    assert first["model"] == "fallback" and first["reason"] == "primary_down", summary
    health = result.extra["health"]
    assert health["status"] == "degraded", summary
    assert any("corrupt" in str(r) for r in health["reasons"]), summary  # the cause, named
    assert not result.failures and all(s.model == "fallback" for s in result.samples), summary
    # Parked, not hammered: once every worker is parked, supervisord starts none of them
    # during the watch (shorter than the park's own retry period).
    assert result.extra["park_retry_s"] > 20.0
    assert result.extra["spawns_in_window"] == 0, summary
    assert not orphans

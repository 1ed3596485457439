"""Watchdog policy: backoff, parking, memory samples, the last ready worker, hang counting."""

from __future__ import annotations

from pathlib import Path

from sentiguard.errors import ExitCode
from sentiguard.runtime.memory import MemorySample
from sentiguard.watchdog.policy import Action, Backoff, Phase, Policy, WorkerRecord
from sentiguard.watchdog.probe import LiveResult
from tests.watchdog_helpers import make_settings


def record(policy: Policy, name: str, phase: Phase = Phase.READY) -> WorkerRecord:
    rec = WorkerRecord(name=name, port=0, backoff=policy.new_backoff())
    rec.phase = phase
    return rec


def mem(uss: float | None, rss: float = 10.0) -> MemorySample:
    return MemorySample(1, (1,), rss_mb=rss, uss_mb=uss)


def test_backoff_doubles_then_caps_and_resets() -> None:
    b = Backoff(1.0, 30.0)
    assert [b.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.next_delay() == 1


def test_backoff_resets_only_after_staying_ready_as_long_as_the_cap(tmp_path: Path) -> None:
    policy = Policy(make_settings(tmp_path, watchdog__backoff_max_s=8.0))
    rec = record(policy, "primary_0")
    for _ in range(3):
        rec.backoff.next_delay()
    rec.enter(Phase.READY, now=100.0)
    policy.on_ready_tick(rec, now=107.0)
    assert rec.backoff.attempts == 3
    policy.on_ready_tick(rec, now=108.0)
    assert rec.backoff.attempts == 0


def test_six_kills_in_thirty_seconds_wait_at_most_the_cap(tmp_path: Path) -> None:
    # Defaults: 1 s doubling, capped at 30 s, so the sixth restart waits at most 30 s and
    # the worker can be ready within a minute of the last kill.
    policy = Policy(make_settings(tmp_path, watchdog__backoff_max_s=30.0))
    rec = record(policy, "primary_0")
    delays = [policy.on_death(rec, -9, now=float(t)).fields["backoff_s"] for t in range(6)]
    assert delays == [1, 2, 4, 8, 16, 30]
    assert max(delays) <= 30


def test_exit_code_4_parks_with_cause_and_retry(tmp_path: Path) -> None:
    policy = Policy(make_settings(tmp_path, watchdog__park_retry_s=300.0))
    rec = record(policy, "primary_0")
    cause = {"cause": "corrupt", "fix": "run `sentiguard train primary`"}
    d = policy.on_death(rec, ExitCode.MODEL_LOAD_ERROR, now=10.0, cause=cause)
    assert d.action is Action.PARK
    assert d.fields["fix"] == cause["fix"]
    assert rec.due == 310.0
    assert rec.backoff.attempts == 0  # parking is not a crash loop


def test_other_exit_codes_back_off(tmp_path: Path) -> None:
    policy = Policy(make_settings(tmp_path))
    rec = record(policy, "primary_0")
    d = policy.on_death(rec, 1, now=10.0)
    assert d.action is Action.START
    assert rec.due == 10.0 + d.fields["backoff_s"]


def test_memory_needs_k_consecutive_samples(tmp_path: Path) -> None:
    policy = Policy(make_settings(tmp_path, watchdog__memory_limit_mb=100))
    rec = record(policy, "primary_0")
    other = record(policy, "primary_1")
    assert policy.on_memory(rec, mem(150), [other]) is None
    assert policy.on_memory(rec, mem(150), [other]) is None
    assert policy.on_memory(rec, mem(90), [other]) is None  # one sample under resets
    assert policy.on_memory(rec, mem(150), [other]) is None
    assert policy.on_memory(rec, mem(150), [other]) is None
    d = policy.on_memory(rec, mem(150), [other])
    assert d is not None and d.action is Action.RECYCLE
    assert d.fields == {"rss_mb": 10.0, "uss_mb": 150, "limit_mb": 100, "samples": 3}


def test_memory_falls_back_to_rss_when_uss_is_unreadable(tmp_path: Path) -> None:
    policy = Policy(make_settings(tmp_path, watchdog__memory_samples=1))
    rec = record(policy, "primary_0")
    d = policy.on_memory(rec, mem(None, rss=150), [record(policy, "primary_1")])
    assert d is not None and d.action is Action.RECYCLE


def test_never_recycles_the_last_ready_worker_while_another_recycles(tmp_path: Path) -> None:
    policy = Policy(make_settings(tmp_path, watchdog__memory_samples=1))
    rec = record(policy, "primary_0")
    other = record(policy, "primary_1", Phase.RECYCLING)
    d = policy.on_memory(rec, mem(150), [other])
    assert d is not None and d.action is Action.HOLD
    assert d.fields["waiting_for"] == ["primary_1"]
    # Once the other is back, the recycle goes ahead.
    other.phase = Phase.READY
    d = policy.on_memory(rec, mem(150), [other])
    assert d is not None and d.action is Action.RECYCLE


def test_critical_memory_recycles_even_the_last_ready_worker(tmp_path: Path) -> None:
    policy = Policy(make_settings(tmp_path, watchdog__memory_samples=1))
    rec = record(policy, "primary_0")
    other = record(policy, "primary_1", Phase.RECYCLING)
    d = policy.on_memory(rec, mem(600), [other])
    assert d is not None and d.action is Action.RECYCLE and d.reason == "memory_critical"


def test_k_live_misses_in_a_row_mean_hung(tmp_path: Path) -> None:
    policy = Policy(make_settings(tmp_path, watchdog__probe_failures=3))
    rec = record(policy, "primary_0")
    timeout = LiveResult(False, 1000.0, "timeout")
    refused = LiveResult(False, 0.3, "refused")
    answered = LiveResult(True, 2.0)
    assert policy.on_live(rec, timeout, now=0.0) is None
    assert policy.on_live(rec, refused, now=1.0) is None
    assert policy.on_live(rec, answered, now=2.0) is None  # an answer resets the count
    assert policy.on_live(rec, timeout, now=3.0) is None
    assert policy.on_live(rec, refused, now=4.0) is None
    d = policy.on_live(rec, timeout, now=5.0)
    assert d is not None and d.action is Action.KILL and d.reason == "hang"
    assert d.fields["misses"] == 3 and d.fields["probe_error"] == "no_answer"
    assert d.fields["error"] == "timeout"

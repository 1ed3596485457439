"""Watchdog policy, issue 10: liveness by progress, the known-answer check, "auto" memory.

Pure policy with a fake clock (the `now` each call is given) and plain result objects:
no process, no HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sentiguard.runtime.memory import MemorySample
from sentiguard.watchdog.decisions import DecisionLog
from sentiguard.watchdog.limits import MemoryProfile, auto_limit_mb
from sentiguard.watchdog.policy import Action, Phase, Policy, WorkerRecord
from sentiguard.watchdog.probe import LiveResult, ProbeResult, Progress
from sentiguard.watchdog.reports import summary, worker_report
from tests.watchdog_helpers import make_settings

FLOOR_S = 5.0
FACTOR = 4.0


def policy(tmp_path: Path, **overrides: Any) -> Policy:
    values: dict[str, Any] = {
        "watchdog__progress_floor_s": FLOOR_S,
        "watchdog__progress_factor": FACTOR,
        "watchdog__check_interval_s": 10.0,
        "watchdog__probe_failures": 3,
        "watchdog__probe_budget_ms": 500,
        "watchdog__memory_limit_mb": "auto",
        "watchdog__memory_critical_mb": "auto",
    }
    values.update(overrides)
    return Policy(make_settings(tmp_path, **values))


def ready(p: Policy, name: str = "primary_0", phase: Phase = Phase.READY) -> WorkerRecord:
    rec = WorkerRecord(name=name, port=0, backoff=p.new_backoff())
    rec.phase = phase
    return rec


def live(
    batches: int,
    queued: int = 0,
    running: int = 0,
    oldest_ms: float | None = None,
    ago_ms: float | None = None,
    batch_ms_max: float | None = None,
    memory: MemoryProfile | None = None,
) -> LiveResult:
    progress = Progress(
        batches=batches,
        queued=queued,
        running=running,
        oldest_running_ms=oldest_ms,
        last_batch_ago_ms=ago_ms,
        batch_ms_max=batch_ms_max,
    )
    return LiveResult(True, 2.0, None, 1, progress, memory)


# --- liveness by progress -------------------------------------------------------------------


def test_a_busy_worker_that_finishes_batches_is_never_hung(tmp_path: Path) -> None:
    # A base-size model on a loaded host: 6 s batches, always work queued, for 10 minutes.
    p = policy(tmp_path)
    rec = ready(p)
    batches = 0
    for second in range(600):
        if second % 6 == 0:
            batches += 1
        running_for_ms = (second % 6) * 1000.0 + 900.0
        result = live(batches, queued=20, running=2, oldest_ms=running_for_ms, batch_ms_max=6900)
        assert p.on_live(rec, result, now=float(second)) is None


def test_one_slow_batch_within_its_measured_scale_is_not_a_hang(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    # Measured batches of up to 4 s: a batch running 15 s is < 4 x 4 s, far past the floor.
    result = live(10, queued=3, running=1, oldest_ms=15_000, batch_ms_max=4000)
    assert p.hang_window_ms(rec) == FLOOR_S * 1000  # nothing measured yet: the floor
    assert p.on_live(rec, result, now=100.0) is None
    assert p.hang_window_ms(rec) == 16_000


def test_work_without_progress_for_the_window_is_hung(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    stalled = [live(10, queued=2, running=1, oldest_ms=ms, batch_ms_max=800) for ms in (4000, 5200)]
    assert p.on_live(rec, stalled[0], now=1.0) is None  # window: max(5 s, 4 x 0.8 s) = 5 s
    d = p.on_live(rec, stalled[1], now=2.2)
    assert d is not None and d.action is Action.KILL and d.reason == "hang"
    assert d.fields["probe_error"] == "no_progress"
    assert d.fields["stalled_ms"] == 5200 and d.fields["window_ms"] == 5000


def test_queued_work_on_a_long_idle_worker_is_judged_from_when_it_waited(tmp_path: Path) -> None:
    # Idle for an hour, then a request is queued just before the batcher picks it up: the
    # last batch is an hour old, yet nothing is late.
    p = policy(tmp_path)
    rec = ready(p)
    assert p.on_live(rec, live(50, ago_ms=3_600_000, batch_ms_max=200), now=0.0) is None
    waiting = live(50, queued=1, running=0, ago_ms=3_600_000, batch_ms_max=200)
    assert p.on_live(rec, waiting, now=1.0) is None
    assert p.on_live(rec, waiting, now=5.5) is None  # seen waiting 4.5 s < 5 s
    d = p.on_live(rec, waiting, now=6.5)  # seen waiting 5.5 s with no batch finished
    assert d is not None and d.fields["probe_error"] == "no_progress"


def test_queued_work_that_moves_resets_the_mark(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    for t in range(0, 60, 2):
        # Between batches: one queued, none running, a batch finished since last time.
        result = live(t, queued=1, running=0, ago_ms=50, batch_ms_max=200)
        assert p.on_live(rec, result, now=float(t)) is None


# --- the known-answer check -----------------------------------------------------------------


def test_the_check_budget_follows_the_measured_batch_time(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    others = [ready(p, "primary_1")]
    assert p.check_budget_ms(rec) == 500  # nothing measured: the configured least budget
    p.on_live(rec, live(5, batch_ms_max=1000), now=0.0)
    assert p.check_budget_ms(rec) == 3000
    assert p.check_timeout_s(rec) == 6.0
    # 900-1000 ms probes behind a running batch (issue 10's false hangs) are in budget.
    for t in range(5):
        waited = ProbeResult(True, 40.0, None, rtt_ms=1000.0)
        assert p.on_check(rec, waited, others, now=float(t)) is None
    assert rec.slow == 0


def test_a_check_is_due_every_interval_after_ready(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    rec.enter(Phase.READY, now=100.0)
    assert not p.check_due(rec, 100.0)  # /ready just ran the known-answer texts
    assert not p.check_due(rec, 109.0)
    assert p.check_due(rec, 110.0)
    p.on_check(rec, ProbeResult(True, 5.0, None, 6.0), [], now=111.0)
    assert not p.check_due(rec, 120.0) and p.check_due(rec, 121.0)


def test_slow_checks_recycle_one_of_two_ready_workers(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    slow = ProbeResult(True, 30.0, None, rtt_ms=2000.0)  # nothing measured: budget 500 ms
    assert p.on_check(rec, slow, [ready(p, "primary_1")], now=0.0) is None
    assert p.on_check(rec, slow, [ready(p, "primary_1")], now=10.0) is None
    d = p.on_check(rec, slow, [ready(p, "primary_1")], now=20.0)
    assert d is not None and d.action is Action.RECYCLE and d.reason == "slow_check"
    assert d.fields["slow"] == 3 and d.fields["budget_ms"] == 500


def test_slow_checks_never_take_the_last_ready_worker(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    timed_out = ProbeResult(False, 1000.0, "timeout", rtt_ms=1000.0)  # slow, not wrong
    others = [ready(p, "primary_1", Phase.RECYCLING)]
    decisions = [p.on_check(rec, timed_out, others, now=10.0 * t) for t in range(6)]
    assert decisions[:2] == [None, None]
    assert all(d is not None and d.action is Action.HOLD for d in decisions[2:])
    assert decisions[2] is not None and decisions[2].fields["why"] == "last ready worker"


def test_wrong_answers_kill_and_are_checked_again_at_once(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    wrong = ProbeResult(False, 12.0, "wrong_answer", rtt_ms=13.0)
    assert p.on_check(rec, wrong, [], now=50.0) is None
    assert p.check_due(rec, 50.0)  # not another 10 s of wrong answers before the next look
    assert p.on_check(rec, ProbeResult(True, 5.0, None, 6.0), [], now=51.0) is None
    assert p.on_check(rec, wrong, [], now=60.0) is None  # a right answer reset the count
    assert p.on_check(rec, wrong, [], now=60.5) is None
    d = p.on_check(rec, wrong, [], now=61.0)  # the last ready worker too: it answers wrong
    assert d is not None and d.action is Action.KILL and d.reason == "hang"
    assert d.fields["probe_error"] == "wrong_answer"


def test_a_refused_or_draining_check_says_nothing_about_the_model(tmp_path: Path) -> None:
    p = policy(tmp_path)
    rec = ready(p)
    for t, error in enumerate(["refused", "draining", "loading"] * 3):
        assert p.on_check(rec, ProbeResult(False, 1.0, error), [], now=float(t)) is None
    assert rec.wrong == rec.slow == 0


# --- memory: "auto" -------------------------------------------------------------------------


def sample(used: float) -> MemorySample:
    return MemorySample(1, (1,), rss_mb=used + 150, uss_mb=used)


def test_auto_limit_is_the_measured_peak_plus_a_margin(tmp_path: Path) -> None:
    p = policy(tmp_path, watchdog__memory_samples=1)
    rec = ready(p)
    embedded = MemoryProfile(ready_mb=360.0, peak_mb=412.0, batch=32, tokens=128)
    p.on_live(rec, live(1, memory=embedded), now=0.0)
    limits = p.memory_limits(rec)
    assert limits.limit_mb == 412 + 150  # the 150 MB floor of the margin
    assert limits.critical_mb == round(1.5 * 562)
    assert limits.source == "auto: peak 412 MB after 32 texts x 128 tokens + 150 MB margin"
    assert auto_limit_mb(1000.0) == 1250  # a base-size peak: a 25 % margin
    others = [ready(p, "primary_1")]
    assert p.on_memory(rec, sample(560.0), others) is None
    d = p.on_memory(rec, sample(600.0), others)
    assert d is not None and d.action is Action.RECYCLE and d.fields["limit_mb"] == 562


def test_a_number_overrides_auto(tmp_path: Path) -> None:
    p = policy(tmp_path, watchdog__memory_limit_mb=900, watchdog__memory_samples=1)
    rec = ready(p)
    p.on_live(rec, live(1, memory=MemoryProfile(360.0, 412.0, 32, 128)), now=0.0)
    limits = p.memory_limits(rec)
    assert (limits.limit_mb, limits.critical_mb) == (900, 1350)
    assert limits.source == "watchdog.memory_limit_mb"
    assert p.on_memory(rec, sample(700.0), [ready(p, "primary_1")]) is None


def test_before_its_measure_only_the_critical_level_recycles(tmp_path: Path) -> None:
    p = policy(tmp_path, watchdog__memory_samples=1, watchdog__memory_critical_mb=2000)
    rec = ready(p)
    limits = p.memory_limits(rec)
    assert limits.limit_mb is None and limits.critical_mb == 2000
    assert p.on_memory(rec, sample(1900.0), [ready(p, "primary_1")]) is None
    d = p.on_memory(rec, sample(2100.0), [ready(p, "primary_1")])
    assert d is not None and d.reason == "memory_critical"


def test_reports_carry_each_workers_limit_and_how_it_was_derived(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, watchdog__memory_limit_mb="auto")
    p = Policy(settings)
    measured, waiting = ready(p), ready(p, "primary_1")
    p.on_live(measured, live(1, memory=MemoryProfile(800.0, 1000.0, 32, 128)), now=0.0)
    body = worker_report(measured, None, p.memory_limits(measured))
    assert body["memory_limit_mb"] == 1250 and body["memory_limit_source"].startswith("auto:")
    body = worker_report(waiting, None, p.memory_limits(waiting))
    assert body["memory_limit_mb"] is None and "waiting" in body["memory_limit_source"]
    decisions = DecisionLog.open(settings)
    limits = summary(p, 1.0, decisions, [measured, waiting])["limits"]
    assert limits["memory_limit_mb"] == 1250 and limits["memory_limit_source"] == "auto"
    assert summary(p, 1.0, decisions)["limits"]["memory_limit_mb"] is None  # nobody yet

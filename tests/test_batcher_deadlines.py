"""The batcher with a fake model: deadlines, abandoned requests and progress counters.

A request nobody will read (its deadline passed before its batch started, or its caller
stopped waiting) is dropped unrun and counted; the urgent probe never is; the lanes'
progress (progress.py, read by GET /live) moves with every batch and shows the one
running now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from sentiguard.chaos.client import wait_until
from sentiguard.primary import batcher as batcher_mod
from sentiguard.primary.batcher import Batcher, DeadlinePassed


class Held:
    """A fake `predict` that records its batches; the batch holding "first" (every batch,
    with `hold_all`) runs until `release()`, so requests sent meanwhile queue up."""

    def __init__(self, hold_all: bool = False, fail: bool = False) -> None:
        self.hold_all, self.fail = hold_all, fail
        self.calls: list[list[str]] = []
        self._released = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        if self.hold_all or "first" in texts:
            self._released.wait(10)
        if self.fail:
            raise ValueError("model exploded")
        return [t.upper() for t in texts]

    def release(self) -> None:
        self._released.set()

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]


@pytest.fixture
def held() -> Iterator[tuple[Batcher[str], Held]]:
    model = Held()
    batcher: Batcher[str] = Batcher(model, max_batch_size=8, max_wait_ms=1).start()
    try:
        yield batcher, model
    finally:
        model.release()
        batcher.stop(2)


def in_thread(call: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `call` in a thread; the dict gets its "result" or "error"."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call(*args, **kwargs)
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def start_held_batch(batcher: Batcher[str], model: Held) -> threading.Thread:
    thread, _ = in_thread(batcher.submit, ["first"], 10)
    wait_until(lambda: model.calls, 5, "the held batch to start")
    return thread


def test_a_request_whose_caller_stopped_waiting_is_skipped(
    held: tuple[Batcher[str], Held],
) -> None:
    batcher, model = held
    first = start_held_batch(batcher, model)
    late, late_outcome = in_thread(batcher.submit, ["late"], 0.05)
    late.join(5)  # its caller gave up while "first" ran: the request is abandoned
    assert isinstance(late_outcome["error"], TimeoutError)
    kept, kept_outcome = in_thread(batcher.submit, ["kept"], 10)
    wait_until(lambda: batcher.queued == 2, 5, "late and kept to queue")
    model.release()
    first.join(5)
    kept.join(5)
    assert kept_outcome["result"] == ["KEPT"]
    assert "late" not in model.texts  # nobody computed the answer nobody reads
    assert model.calls == [["first"], ["kept"]]
    assert batcher.snapshot()["dropped"] == 1
    assert batcher.texts == 2


def test_a_request_whose_deadline_passed_in_the_queue_is_dropped_with_deadline_passed(
    held: tuple[Batcher[str], Held], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane, not the caller's own wait, finds the deadline passed: the caller (still
    waiting) hears DeadlinePassed at once instead of a result after the batch."""
    batcher, model = held
    clock = {"skew": 0.0}
    fake_time = SimpleNamespace(monotonic=lambda: time.monotonic() + clock["skew"])
    monkeypatch.setattr(batcher_mod, "time", fake_time)
    first = start_held_batch(batcher, model)
    late, late_outcome = in_thread(batcher.submit, ["late"], 5)
    wait_until(lambda: batcher.queued == 1, 5, "late to queue")
    clock["skew"] = 60.0  # its 5 s passed while "first" ran (the caller waits on)
    model.release()
    late.join(5)
    first.join(5)
    assert isinstance(late_outcome["error"], DeadlinePassed)
    assert model.calls == [["first"]]
    assert batcher.snapshot()["dropped"] == 1


def test_no_time_left_is_dropped_before_queueing(held: tuple[Batcher[str], Held]) -> None:
    batcher, model = held
    with pytest.raises(DeadlinePassed):
        batcher.submit(["nothing left"], 0)
    assert batcher.submit(["x"], 5) == ["X"]
    assert model.calls == [["x"]]
    assert batcher.snapshot()["dropped"] == 1


def test_the_urgent_probe_is_never_dropped(held: tuple[Batcher[str], Held]) -> None:
    batcher, model = held
    first = start_held_batch(batcher, model)
    probe, probe_outcome = in_thread(batcher.submit, ["probe"], 0.05, urgent=True)
    probe.join(5)
    assert isinstance(probe_outcome["error"], TimeoutError)  # its caller gave up...
    model.release()
    first.join(5)
    wait_until(lambda: ["probe"] in model.calls, 5, "the probe to run anyway")
    assert batcher.snapshot()["dropped"] == 0  # ...but a probe is never skipped


def test_without_a_timeout_a_request_is_never_dropped(held: tuple[Batcher[str], Held]) -> None:
    batcher, model = held
    first = start_held_batch(batcher, model)
    waiting, outcome = in_thread(batcher.submit, ["patient"])
    wait_until(lambda: batcher.queued == 1, 5, "patient to queue")
    model.release()
    waiting.join(5)
    first.join(5)
    assert outcome["result"] == ["PATIENT"] and batcher.snapshot()["dropped"] == 0


def test_progress_shows_the_running_batch_and_moves_when_it_finishes(
    held: tuple[Batcher[str], Held],
) -> None:
    batcher, model = held
    before = batcher.snapshot()
    assert before["batches"] == 0 and before["running"] == 0
    assert before["batch_ms"] is None and before["last_batch_ago_ms"] is None
    assert before["oldest_running_ms"] is None and before["batch_ms_max"] is None
    first = start_held_batch(batcher, model)
    waiting, _ = in_thread(batcher.submit, ["a", "b"], 10)
    wait_until(lambda: batcher.queued == 1, 5, "a request to queue")
    running = batcher.snapshot()
    assert running["running"] == 1 and running["queued"] == 1 and running["batches"] == 0
    # The running batch's age grows while it is held: compared with itself, no clock bound.
    wait_until(
        lambda: batcher.snapshot()["oldest_running_ms"] > running["oldest_running_ms"],
        5,
        "the running batch to age",
    )
    model.release()
    first.join(5)
    waiting.join(5)
    after = batcher.snapshot()
    assert after["batches"] == 2 and after["texts"] == 3
    assert after["running"] == 0 and after["queued"] == 0 and after["oldest_running_ms"] is None
    # The held batch was the longest, and it ran at least as long as it was seen running.
    assert after["batch_ms_max"] >= running["oldest_running_ms"]
    assert after["batch_ms"] is not None and after["batch_ms"] <= after["batch_ms_max"]
    assert after["last_batch_ago_ms"] is not None and after["last_batch_ago_ms"] >= 0


def test_a_batch_that_raised_still_counts_as_progress() -> None:
    """Liveness asks whether lanes move on; wrong or failing answers are the probe's."""
    model = Held(fail=True)
    model.release()
    batcher: Batcher[str] = Batcher(model, max_batch_size=4, max_wait_ms=1).start()
    try:
        with pytest.raises(ValueError):
            batcher.submit(["x", "y"], 5)
    finally:
        batcher.stop(2)
    assert batcher.snapshot()["batches"] == 1 and batcher.snapshot()["running"] == 0


def test_a_request_that_does_not_fit_goes_to_a_free_lane() -> None:
    """A request too big for a lane's batch goes back to the queue for the next free lane,
    not held by the busy lane until its batch ends: the start-up memory measure runs one
    full batch on every lane at once, and a slow batch must not hide work from an idle lane."""
    both_running = threading.Barrier(2, timeout=5)

    def predict(texts: list[str]) -> list[str]:
        both_running.wait()  # BrokenBarrierError unless another lane runs a batch too
        return texts

    batcher: Batcher[str] = Batcher(predict, max_batch_size=2, max_wait_ms=200, lanes=2)
    # Queued before the lanes start: whichever lane takes ["a"] sees more waiting, so it
    # looks for company and finds ["b", "c"], which does not fit beside it.
    small, small_outcome = in_thread(batcher.submit, ["a"], 10)
    wait_until(lambda: batcher.queued == 1, 5, "a to queue")
    big, big_outcome = in_thread(batcher.submit, ["b", "c"], 10)
    wait_until(lambda: batcher.queued == 2, 5, "b, c to queue")
    batcher.start()
    try:
        small.join(10)
        big.join(10)
    finally:
        batcher.stop(2)
    assert small_outcome.get("result") == ["a"], small_outcome
    assert big_outcome.get("result") == ["b", "c"], big_outcome

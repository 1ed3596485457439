"""The memory reading /live reports: recent, never taken on the request's path but once."""

from __future__ import annotations

import threading

import pytest

from sentiguard.chaos.client import wait_until
from sentiguard.primary import state


def test_a_stale_reading_is_answered_at_once_and_refreshed_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    taken: list[int] = []
    slow_walk = threading.Event()  # the page-table walk, held until set

    def fake_memory_mb() -> dict[str, float | None]:
        taken.append(1)
        if len(taken) > 1:
            slow_walk.wait(10)
        return {"rss_mb": float(len(taken)), "uss_mb": None}

    monkeypatch.setattr(state, "memory_mb", fake_memory_mb)
    reading = state.MemoryReading(max_age_s=0.0)  # every reading is stale at once
    assert reading.recent()["rss_mb"] == 1.0  # the first is taken on the caller's path
    # Stale: answered with the old value while one refresh runs (not one per call).
    assert [reading.recent()["rss_mb"] for _ in range(5)] == [1.0] * 5
    wait_until(lambda: len(taken) == 2, 5, "the background refresh to start")
    slow_walk.set()
    wait_until(lambda: (reading.recent()["rss_mb"] or 0) >= 2.0, 5, "the refreshed reading")
    assert len(taken) >= 2


def test_a_fresh_reading_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[int] = []

    def fake_memory_mb() -> dict[str, float | None]:
        taken.append(1)
        return {"rss_mb": 1.0, "uss_mb": 1.0}

    monkeypatch.setattr(state, "memory_mb", fake_memory_mb)
    reading = state.MemoryReading(max_age_s=3600)
    for _ in range(10):
        reading.recent()
    assert len(taken) == 1

"""Liveness by progress against the real processes (issue 10): slow is not hung, stalled is.

One service, 2 workers on the embedded model, faults enabled, the known-answer check every
second so that a few seconds hold several checks. A `slow` worker, whose checks take longer
than the old fixed 500 ms budget under a few clients, keeps its pid; a `stall`ed worker
(forward passes block, its HTTP thread answers) is killed as hung, "no_progress", while
the other keeps its pid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sentiguard.chaos.client import wait_until
from sentiguard.chaos.load import Load
from sentiguard.chaos.service import ServiceHandle, start_service
from sentiguard.runtime.paths import RunDir
from sentiguard.watchdog.probe import Progress, probe_health, probe_live

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECK_INTERVAL_S = 1.0
PROBE_FAILURES = 3
SLOW_MS = 700  # every batch of the slow worker sleeps this long: > the old 500 ms budget


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    handle = start_service(
        tmp_path_factory.mktemp("progress"),
        workers=2,
        faults=True,
        overrides={
            "watchdog.check_interval_s": CHECK_INTERVAL_S,
            "watchdog.probe_failures": PROBE_FAILURES,
            "watchdog.progress_floor_s": 3.0,
        },
    )
    yield handle
    handle.stop()


def decisions(service: ServiceHandle, event: str) -> list[dict[str, Any]]:
    path = RunDir(service.settings).watchdog_log
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def test_a_slow_worker_under_load_is_not_recycled(service: ServiceHandle) -> None:
    # The auto memory limit arrived from the worker's own measure, before any fault.
    limited = wait_until(
        lambda: (w := service.worker(0)).get("memory_limit_mb") and w, 30.0, "a memory limit"
    )
    assert str(limited.get("memory_limit_source", "")).startswith("auto: peak"), limited
    pids = [service.supervisor_pid(i) for i in range(2)]
    assert service.fault(0, {"kind": "slow", "ms": SLOW_MS}).status == 200
    port = service.worker_port(0)
    try:
        with Load(service.port, clients=4) as load:
            # The premise: under this load a check of the slow worker takes longer than the
            # old fixed budget (it waits behind a batch, then sleeps in its own).
            rtts = [probe_health(port, 10.0).rtt_ms or 0.0 for _ in range(3)]
            assert min(rtts) > 500, rtts

            # Its batch time is measured: the scale its checks and hang window follow.
            def measured_slow() -> Progress | None:
                progress = probe_live(port, 2.0).progress
                return progress if progress and (progress.batch_ms_max or 0) >= SLOW_MS else None

            wait_until(measured_slow, 30.0, "the slow batches measured")
            # Several times the checks a fixed budget needed to recycle it.
            watched_until = time.monotonic() + 4 * PROBE_FAILURES * CHECK_INTERVAL_S
            while time.monotonic() < watched_until:
                assert service.supervisor_pid(0) == pids[0], decisions(service, "recycle")
                time.sleep(0.5)  # the pace of the look, not a wait for anything
            load.stop()
        assert not decisions(service, "recycle"), decisions(service, "recycle")
        assert not decisions(service, "slow_check_hold")
        assert [service.supervisor_pid(i) for i in range(2)] == pids
    finally:
        service.fault(0, {"kind": "slow", "ms": 0})


def test_a_stalled_worker_is_killed_as_hung_and_the_other_keeps_its_pid(
    service: ServiceHandle,
) -> None:
    wait_until(service.all_ready, 60.0, "both workers ready")
    pids = [service.supervisor_pid(i) for i in range(2)]
    assert service.fault(1, {"kind": "stall", "seconds": 120}).status == 200
    with Load(service.port, clients=2):
        replaced = wait_until(
            lambda: service.supervisor_pid(1) not in (0, pids[1]),
            90.0,
            "the stalled worker replaced",
        )
    assert replaced
    (hang,) = [d for d in decisions(service, "recycle") if d["worker"] == "primary_1"]
    assert hang["reason"] == "hang" and hang["probe_error"] == "no_progress", hang
    assert hang["stalled_ms"] > hang["window_ms"]
    assert service.supervisor_pid(0) == pids[0]  # the healthy worker was never touched
    wait_until(service.all_ready, 120.0, "both workers ready again")

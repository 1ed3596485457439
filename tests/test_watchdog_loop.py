"""The watchdog loop with supervisord, the gateway and the workers' HTTP faked."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sentiguard.runtime import reload
from sentiguard.runtime.drain import GatewayLink
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.recycle import START_CAP_FACTOR
from sentiguard.runtime.supervisor_client import ProcessState
from sentiguard.settings import Settings
from sentiguard.watchdog.decisions import DecisionLog
from sentiguard.watchdog.policy import Phase
from sentiguard.watchdog.probe import Kind, LiveResult
from sentiguard.watchdog.process import Watchdog
from sentiguard.watchdog.reports import worker_report
from tests.watchdog_helpers import (
    FakeGateway,
    FakeSupervisor,
    FakeWorkers,
    events,
    make_settings,
    read_log,
    wait_until,
)

NAMES = ["primary_0", "primary_1"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A Watchdog wired to fakes, with helpers to run rounds and wait for its threads."""

    def __init__(self, settings: Settings, gateway: Any = None) -> None:
        self.settings = settings
        self.sup = FakeSupervisor(NAMES)
        self.gw = gateway if gateway is not None else FakeGateway(self.sup.calls)
        self.workers = FakeWorkers(settings.primary.base_port)
        self.clock = Clock()
        self.wd = Watchdog(
            settings,
            supervisor=self.sup,  # type: ignore[arg-type]
            gateway=self.gw,  # type: ignore[arg-type]
            sample=self.workers.sample,
            health=self.workers.health,
            live=self.workers.live,
            ready=self.workers.ready,
            kill=self.kill,
            cpu=lambda pid: self.cpu_s(),
            clock=self.clock,
        )
        self.cpu_s: Callable[[], float | None] = lambda: 0.0

    def kill(self, pid: int) -> list[int]:
        self.sup.calls.append(("kill", str(pid)))
        for name, info in self.sup.processes().items():
            if info.pid == pid:
                self.sup.set(name, ProcessState.EXITED, 0, -1)
        return [pid]

    def settle(self) -> None:
        """Wait until no action thread or probe is running."""
        wait_until(lambda: not any(r.busy for r in self.wd.watch.records.values()))
        wait_until(self.wd.probes.idle)

    def round(self, n: int = 1) -> None:
        for _ in range(n):
            self.wd.watch.round()
            self.settle()

    def rec(self, name: str) -> Any:
        return self.wd.watch.records[name]

    def close(self) -> None:
        self.wd.stop()
        self.wd.probes.shutdown(wait=True)


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = Rig(make_settings(tmp_path))
    r.round()  # adopt both workers: they answer /ready
    assert [r.rec(n).phase for n in NAMES] == [Phase.READY, Phase.READY]
    yield r
    r.close()


def test_crash_restarts_with_exponential_backoff(rig: Rig) -> None:
    rig.sup.set("primary_0", ProcessState.EXITED, 0, -1)
    rig.round()
    assert rig.rec("primary_0").phase is Phase.BACKOFF
    assert ("start", "primary_0") not in rig.sup.calls
    rig.clock.now += 0.9
    rig.round()
    assert ("start", "primary_0") not in rig.sup.calls  # still inside the 1 s backoff
    rig.clock.now += 0.2
    rig.round()
    assert rig.sup.calls.count(("start", "primary_0")) == 1
    assert rig.rec("primary_0").phase is Phase.READY
    assert rig.rec("primary_0").restarts["crash"] == 1
    # Killed again at once: the next wait doubles.
    rig.sup.set("primary_0", ProcessState.EXITED, 0, -9)
    rig.round()
    crashes = events(rig.settings, "crash")
    assert [c["backoff_s"] for c in crashes] == [1.0, 2.0]
    assert crashes[-1]["exitstatus"] == -9
    assert crashes[-1]["action"] == "start in 2.0s"


def test_exit_4_parks_the_worker_and_retries_rarely(rig: Rig) -> None:
    failed = {
        "ts": "x",
        "event": "model_load_failed",
        "cause": "corrupt",
        "fix": "run `sentiguard train primary` to rebuild models/primary",
    }
    rig.sup.log_tail = "loading\n" + json.dumps(failed) + "\n"
    rig.sup.set("primary_0", ProcessState.EXITED, 0, 4)
    rig.round()
    rec = rig.rec("primary_0")
    assert rec.phase is Phase.PARKED
    park = events(rig.settings, "park")[-1]
    assert park["cause"] == "corrupt" and park["fix"] == failed["fix"]
    body = worker_report(rec)
    assert body["parked"] is True and failed["fix"] in body["reason"]
    rig.clock.now += 59
    rig.round(3)
    assert ("start", "primary_0") not in rig.sup.calls
    rig.clock.now += 1.5
    rig.round()
    assert rig.sup.calls.count(("start", "primary_0")) == 1
    assert events(rig.settings, "start")[-1]["reason"] == "park_retry"


def test_hung_worker_is_drained_then_killed_then_started(rig: Rig) -> None:
    rig.workers.hung.add(0)
    old_pid = rig.rec("primary_0").pid
    rig.round(5)
    calls = rig.sup.calls
    drain = calls.index(("drain", "primary_0"))
    kill = calls.index(("kill", str(old_pid)))
    start = calls.index(("start", "primary_0"))
    assert drain < kill < start  # the gateway hears first; no graceful stop is waited for
    assert ("stop", "primary_1") not in calls
    rec = rig.rec("primary_0")
    assert rec.restarts["hang"] == 1
    recycle = events(rig.settings, "recycle")[0]
    assert recycle["reason"] == "hang" and recycle["misses"] == 3
    assert recycle["action"] == "drain+kill+start"


def test_memory_leak_recycles_after_k_samples_and_undrains(rig: Rig) -> None:
    pid = rig.rec("primary_1").pid
    rig.workers.memory_mb[pid] = 150.0
    rig.round(2)
    assert ("drain", "primary_1") not in rig.sup.calls
    rig.round()
    calls = rig.sup.calls
    drain, stop = calls.index(("drain", "primary_1")), calls.index(("stop", "primary_1"))
    assert drain < stop < calls.index(("start", "primary_1"))
    assert not any(c[0] == "kill" for c in calls)  # a leaking worker is stopped gracefully
    assert rig.rec("primary_1").phase is Phase.READY
    assert rig.rec("primary_1").restarts["memory"] == 1
    # The last report of primary_1 undrains it and carries the restart.
    last = [b for n, b in rig.gw.reports if n == "primary_1"][-1]
    assert last["drain"] is False and last["restarts"]["memory"] == 1


def test_decision_lines_are_readable_json(rig: Rig) -> None:
    pid = rig.rec("primary_0").pid
    rig.workers.memory_mb[pid] = 150.0
    rig.round(3)
    line = events(rig.settings, "recycle")[0]
    assert list(line)[:2] == ["ts", "event"]
    assert line["ts"].endswith("Z")
    assert {k: line[k] for k in ("worker", "pid", "reason", "uss_mb", "limit_mb", "samples")} == {
        "worker": "primary_0",
        "pid": pid,
        "reason": "memory",
        "uss_mb": 150.0,
        "limit_mb": 100.0,
        "samples": 3,
    }
    assert line["action"] == "drain+restart"
    ready = events(rig.settings, "ready")[-1]
    assert ready["worker"] == "primary_0" and ready["recovered_s"] >= 0
    # Every line of the file is one JSON object with ts and event.
    assert all({"ts", "event"} <= set(r) for r in read_log(rig.settings))


def test_last_ready_worker_is_held_while_the_other_is_down(rig: Rig) -> None:
    rig.sup.set("primary_1", ProcessState.EXITED, 0, -9)
    rig.workers.memory_mb[rig.rec("primary_0").pid] = 150.0
    rig.round(5)
    assert ("stop", "primary_0") not in rig.sup.calls
    holds = events(rig.settings, "memory_hold")
    assert len(holds) == 1 and holds[0]["waiting_for"] == ["primary_1"]


def test_reload_lock_holds_recycles(rig: Rig) -> None:
    # Between two workers of a reload: nothing is recycled, even over the limit.
    reload.write_reload_lock(rig.settings, reload.ReloadLock(os.getpid(), "m2", None, False))
    rig.workers.memory_mb[rig.rec("primary_0").pid] = 150.0
    rig.round(4)
    assert ("stop", "primary_0") not in rig.sup.calls
    assert len(events(rig.settings, "recycle_held")) == 1
    # The worker being reloaded belongs to the reload.
    reload.write_reload_lock(rig.settings, reload.ReloadLock(os.getpid(), "m2", "primary_1", True))
    rig.round()
    assert rig.rec("primary_1").phase is Phase.RELOADING
    assert ("stop", "primary_0") not in rig.sup.calls
    # The worker being reloaded is reported drained, as the lock says.
    last = [b for n, b in rig.gw.reports if n == "primary_1"][-1]
    assert last["drain"] is True
    RunDir(rig.settings).reload_lock.unlink()
    rig.round()
    assert rig.rec("primary_1").restarts["reload"] == 1
    assert events(rig.settings, "reload_released")


def test_a_hung_probe_does_not_delay_the_other_worker(rig: Rig) -> None:
    release = threading.Event()
    seen: dict[int, int] = {0: 0, 1: 0}
    base = rig.workers.base_port

    def live(port: int, timeout_s: float) -> LiveResult:
        seen[port - base] += 1
        if port == base:
            release.wait(10)  # far longer than a round: a worker that never answers
        return LiveResult(True, 1.0)

    rig.wd.probes.probes[Kind.LIVE] = live
    pending = rig.wd.probes.pending
    for _ in range(5):
        rig.wd.watch.round()
        wait_until(lambda: (p := pending.get(("primary_1", Kind.LIVE))) is None or p[-1].done())
    assert seen[0] == 1  # one probe, still outstanding, never duplicated
    assert seen[1] >= 4  # the other worker kept being probed every round
    release.set()


def test_unreachable_gateway_is_logged_once_and_restarts_go_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    link = GatewayLink(settings, DecisionLog.open(settings), timeout_s=0.2)
    r = Rig(settings, gateway=link)
    try:
        r.round(3)
        r.sup.set("primary_0", ProcessState.EXITED, 0, -9)
        r.round()
        r.clock.now += 1.1
        r.round(3)
        assert r.sup.calls.count(("start", "primary_0")) == 1
        # Once per gateway process, each named.
        away = events(settings, "gateway_unreachable")
        assert sorted(e["gateway"] for e in away) == ["gateway_0", "gateway_1"]
    finally:
        r.close()


def test_run_stops_on_stop(tmp_path: Path) -> None:
    r = Rig(make_settings(tmp_path))
    thread = threading.Thread(target=r.wd.run)
    thread.start()
    wait_until(lambda: r.gw.summaries)
    r.wd.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    names = [e["event"] for e in read_log(r.settings)]
    assert names[0] == "watchdog_started" and names[-1] == "watchdog_stopped"
    summary = r.gw.summaries[-1]
    assert summary["pid"] == os.getpid() and summary["limits"]["memory_limit_mb"] == 100


def test_a_worker_found_stopped_at_start_is_started_later_stops_are_left(tmp_path: Path) -> None:
    r = Rig(make_settings(tmp_path))
    try:
        # A watchdog that died between its stop and its start left primary_0 STOPPED.
        r.sup.set("primary_0", ProcessState.STOPPED)
        r.round()
        assert r.sup.calls.count(("start", "primary_0")) == 1
        assert r.rec("primary_0").phase is Phase.READY
        # Stopped later, while we watch: an operator did it; leave it alone.
        r.sup.set("primary_0", ProcessState.STOPPED)
        r.round(3)
        assert r.sup.calls.count(("start", "primary_0")) == 1
        assert r.rec("primary_0").phase is Phase.STOPPED
        assert events(r.settings, "worker_stopped")[0]["action"] == "leave alone until started"
    finally:
        r.close()


def test_a_start_without_progress_is_killed_as_stuck(tmp_path: Path) -> None:
    r = Rig(make_settings(tmp_path, watchdog__start_timeout_s=0.3))
    try:
        r.workers.ready_ports = {r.workers.base_port + 1}  # primary_0 never gets ready
        r.cpu_s = lambda: 0.5  # and uses no CPU: stuck, not loading
        r.round()
        timeout = events(r.settings, "start_timeout")[0]
        assert timeout["worker"] == "primary_0" and timeout["cpu_s"] == 0.5
        assert ("kill", "100") in r.sup.calls
        assert not events(r.settings, "start_slow")
        r.round()  # the kill left it EXITED: a crash, backed off
        assert events(r.settings, "crash")[0]["worker"] == "primary_0"
    finally:
        r.close()


def test_a_slow_start_that_makes_progress_is_not_killed(tmp_path: Path) -> None:
    r = Rig(make_settings(tmp_path, watchdog__start_timeout_s=0.2))
    try:
        r.workers.ready_ports = {r.workers.base_port + 1}
        used = iter(range(2, 1000, 2))  # two CPU-seconds more every window: loading

        def cpu() -> float:
            # Ready during the window after the third look at its progress: the watchdog
            # must have waited three more windows, whatever the windows took in wall time.
            value = float(next(used))
            if value >= 6:
                r.workers.ready_ports = None
            return value

        r.cpu_s = cpu
        r.round()
        assert r.rec("primary_0").phase is Phase.READY
        assert ("kill", "100") not in r.sup.calls
        slow = events(r.settings, "start_slow")
        assert len(slow) == 3
        assert slow[0]["cpu_s"] == 2.0 and slow[0]["action"] == "wait 0.2s more"
    finally:
        r.close()


def test_start_is_capped_even_with_progress(tmp_path: Path) -> None:
    r = Rig(make_settings(tmp_path, watchdog__start_timeout_s=0.1))
    try:
        r.workers.ready_ports = {r.workers.base_port + 1}
        used = iter(range(2, 1000, 2))
        r.cpu_s = lambda: float(next(used))
        r.round()
        window = r.wd.policy.start_timeout_s
        slow = events(r.settings, "start_slow")
        # Given more windows while it made progress, but never more than the cap allows.
        assert 1 <= len(slow) < START_CAP_FACTOR
        stuck = events(r.settings, "start_timeout")[0]
        # Killed because one more window would pass the cap (waited_s is rounded to 0.01).
        assert stuck["waited_s"] + window >= window * START_CAP_FACTOR - 0.01
        assert ("kill", "100") in r.sup.calls
    finally:
        r.close()


def test_a_timed_out_probe_wakes_the_loop_and_memory_keeps_its_pace(tmp_path: Path) -> None:
    # An interval far longer than the test: without the wake-up, the three misses would
    # take three probe rounds, half an interval apart.
    r = Rig(make_settings(tmp_path, watchdog__interval_s=60.0))
    thread = threading.Thread(target=r.wd.run)
    try:
        thread.start()
        wait_until(lambda: len(r.wd.watch.records) == 2 and r.rec("primary_1").phase is Phase.READY)
        r.workers.memory_mb[r.rec("primary_0").pid] = 150.0  # over the limit, 3 samples
        r.workers.hung.add(1)
        rounds = r.wd.watch.rounds
        r.wd.wake.set()  # one probe round now, as the next one would come anyway
        # Every later round comes from a timed-out probe: the hang is recycled before the
        # next probe round the interval would bring.
        wait_until(lambda: events(r.settings, "recycle"), timeout=r.wd.interval_s / 2)
        assert r.wd.watch.rounds - rounds >= 4  # the first probe, then 3 misses
        first = events(r.settings, "recycle")[0]
        assert first["worker"] == "primary_1" and first["reason"] == "hang"
        # The early rounds took no memory samples: primary_0 has not been recycled.
        assert r.rec("primary_0").over_limit < 3
    finally:
        r.wd.stop()
        thread.join(timeout=10)
        r.close()


def test_a_hung_worker_is_killed_even_during_a_reload(rig: Rig) -> None:
    reload.write_reload_lock(rig.settings, reload.ReloadLock(os.getpid(), "m2", "primary_1", True))
    rig.workers.hung.add(0)
    rig.round(5)
    assert ("kill", "100") in rig.sup.calls  # a hung worker serves nothing: no capacity lost
    assert not events(rig.settings, "recycle_held")


def test_a_failing_round_is_logged_and_the_loop_goes_on(tmp_path: Path) -> None:
    r = Rig(make_settings(tmp_path))
    real = r.sup.processes
    failures = iter([RuntimeError("surprise")])

    def flaky(group: str = "primary") -> Any:
        for e in failures:
            raise e
        return real(group)

    r.sup.processes = flaky  # type: ignore[method-assign]
    thread = threading.Thread(target=r.wd.run)
    thread.start()
    try:
        wait_until(lambda: r.wd.watch.rounds >= 3)
        failed = events(r.settings, "round_failed")
        assert len(failed) == 1 and "surprise" in failed[0]["reason"]
        wait_until(lambda: len(r.wd.watch.records) == 2 and r.rec("primary_0").phase is Phase.READY)
    finally:
        r.wd.stop()
        thread.join(timeout=10)
        r.close()


def test_restart_counts_survive_a_watchdog_restart_but_not_a_new_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = Rig(settings)
    try:
        first.round()
        first.sup.set("primary_0", ProcessState.EXITED, 0, -9)
        first.round()
        first.clock.now += 1.1
        first.round()
        assert first.rec("primary_0").restarts["crash"] == 1
    finally:
        first.close()
    second = Rig(settings)  # supervisord restarted the watchdog: same supervisord pid
    try:
        second.round()
        assert second.rec("primary_0").restarts["crash"] == 1
        assert worker_report(second.rec("primary_0"))["restarts"]["crash"] == 1
    finally:
        second.close()
    third = Rig(settings)
    third.sup.supervisord_pid = lambda: 5353  # type: ignore[method-assign]
    try:
        third.round()  # a new `sentiguard up`: a new supervisord, counts from zero
        assert third.rec("primary_0").restarts["crash"] == 0
    finally:
        third.close()

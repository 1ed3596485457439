"""The real watchdog loop and `reload` against a real supervisord running stand-in workers.

The stand-in (`tests/watchdog_helpers.py worker`) serves /ready and /health in
milliseconds with no model, so kill, hang, cannot-start and reload run in seconds. The
full service under load is the chaos tests' job.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentiguard.chaos.ports import free_port_block
from sentiguard.runtime import reload
from sentiguard.runtime.endpoints import probe_ready, worker
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.supervisor_client import SupervisorClient
from sentiguard.settings import Settings
from sentiguard.watchdog.policy import Phase
from sentiguard.watchdog.process import Watchdog
from tests.watchdog_helpers import (
    events,
    make_settings,
    running_supervisord,
    wait_until,
    worker_command,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        primary__base_port=free_port_block(2),
        watchdog__interval_s=0.2,
        watchdog__probe_timeout_ms=300,
        watchdog__probe_budget_ms=250,
        watchdog__probe_failures=2,
        watchdog__backoff_initial_s=0.2,
        watchdog__backoff_max_s=2.0,
        watchdog__drain_timeout_s=0.5,
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[SupervisorClient]:
    with running_supervisord(settings, worker_command()):
        client = SupervisorClient(settings)
        wait_until(lambda: all(ready(settings, i) for i in (0, 1)))
        yield client


@pytest.fixture
def watchdog(settings: Settings, service: SupervisorClient) -> Iterator[Watchdog]:
    wd = Watchdog(settings)
    thread = threading.Thread(target=wd.run, name="watchdog")
    thread.start()
    try:
        records = wd.watch.records
        wait_until(
            lambda: len(records) == 2 and all(r.phase is Phase.READY for r in records.values())
        )
        yield wd
    finally:
        wd.stop()
        thread.join(timeout=15)
        assert not thread.is_alive()


def ready(settings: Settings, index: int) -> str | None:
    r = probe_ready(worker(settings, index).port, 0.5)
    return r.model_version if r.ready else None


def pid_of(client: SupervisorClient, name: str) -> int:
    return client.info(name).pid


def test_killed_worker_is_restarted(
    settings: Settings, service: SupervisorClient, watchdog: Watchdog
) -> None:
    old = pid_of(service, "primary_0")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: (p := pid_of(service, "primary_0")) and p != old and ready(settings, 0))
    wait_until(lambda: watchdog.watch.records["primary_0"].phase is Phase.READY)
    assert watchdog.watch.records["primary_0"].restarts["crash"] == 1
    crash = events(settings, "crash")[0]
    assert crash["worker"] == "primary_0" and crash["pid"] == old and crash["backoff_s"] == 0.2


def test_stopped_worker_is_killed_as_hung_and_replaced(
    settings: Settings, service: SupervisorClient, watchdog: Watchdog
) -> None:
    old = pid_of(service, "primary_1")
    os.kill(old, signal.SIGSTOP)  # alive to supervisord, answers nothing
    wait_until(lambda: (p := pid_of(service, "primary_1")) and p != old and ready(settings, 1))
    recycle = events(settings, "recycle")[0]
    assert recycle["reason"] == "hang" and recycle["pid"] == old
    assert events(settings, "killed")[0]["pids"] == [old]
    wait_until(lambda: watchdog.watch.records["primary_1"].restarts["hang"] == 1)
    assert pid_of(service, "primary_0") == watchdog.watch.records["primary_0"].pid  # untouched


def test_exit_4_is_parked_not_restarted(
    settings: Settings, service: SupervisorClient, watchdog: Watchdog
) -> None:
    port = worker(settings, 0).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("POST", "/_exit", headers={"X-Code": "4"})
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        pass  # it may exit before the answer is out
    finally:
        conn.close()
    wait_until(lambda: watchdog.watch.records["primary_0"].phase is Phase.PARKED)
    park = events(settings, "park")[0]
    assert park["exitstatus"] == 4 and park["retry_s"] == 60.0
    # Many backoff periods (0.2 s doubling to 2 s) later: still parked, never started.
    later = watchdog.watch.rounds + 20
    wait_until(lambda: watchdog.watch.rounds >= later)
    assert watchdog.watch.records["primary_0"].phase is Phase.PARKED
    assert not service.info("primary_0").state.alive
    assert not events(settings, "start")


def test_reload_moves_workers_one_at_a_time(
    settings: Settings,
    service: SupervisorClient,
    watchdog: Watchdog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = {n: pid_of(service, n) for n in ("primary_0", "primary_1")}
    # Watch both workers while the reload runs: one of them must always be ready.
    done = threading.Event()
    none_ready: list[float] = []
    one_down: list[float] = []

    def watch() -> None:
        while not done.is_set():
            up = [ready(settings, 0), ready(settings, 1)]
            if not any(up):
                none_ready.append(1.0)
            elif not all(up):
                one_down.append(1.0)
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert reload.reload(settings, "v2") == 0
    finally:
        done.set()
        watcher.join()
    assert one_down, "the watcher never saw a worker restart: it proves nothing"
    assert not none_ready, "both workers were down at once during the reload"
    out = capsys.readouterr().out
    assert "[1/2] primary_0" in out and "[2/2] primary_1" in out and "done" in out
    assert ready(settings, 0) == "v2" and ready(settings, 1) == "v2"
    assert all(pid_of(service, n) != before[n] for n in before)
    assert not RunDir(settings).reload_lock.exists()
    assert (RunDir(settings).reload_model).read_text().strip() == "v2"
    steps = events(settings, "reload_step")
    assert [s["worker"] for s in steps] == ["primary_0", "primary_1"]
    assert all(s["outcome"] == "ready" for s in steps)
    # The watchdog neither fought it nor double-counted it.
    wait_until(lambda: all(r.restarts["reload"] == 1 for r in watchdog.watch.records.values()))
    assert not events(settings, "crash") and not events(settings, "recycle")


def test_stale_reload_lock_is_ignored(settings: Settings) -> None:
    reload.write_reload_lock(settings, reload.ReloadLock(pid=2**22 + 12345, model="x"))
    assert reload.read_reload_lock(settings) is None
    reload.write_reload_lock(settings, reload.ReloadLock(pid=os.getpid(), model="x"))
    assert reload.read_reload_lock(settings) == reload.ReloadLock(os.getpid(), "x")


def test_reload_to_a_model_that_cannot_load_restores_the_previous_one(
    settings: Settings,
    service: SupervisorClient,
    watchdog: Watchdog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    untouched = pid_of(service, "primary_1")
    assert reload.reload(settings, "broken") == 1
    out = capsys.readouterr().out
    assert "died on broken (exit status 4)" in out and "Not moved: primary_1" in out
    assert not RunDir(settings).reload_model.exists()  # back to the configured model
    wait_until(lambda: ready(settings, 0) == "v0")
    assert pid_of(service, "primary_1") == untouched
    assert not RunDir(settings).reload_lock.exists()
    wait_until(lambda: watchdog.watch.records["primary_0"].phase is Phase.READY)
    assert not events(settings, "park")  # the reload, not the watchdog, handled that exit

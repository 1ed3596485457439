"""SupervisorClient against a real supervisord on a unix socket in a temp dir."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from sentiguard.runtime.supervisor_client import (
    ProcessInfo,
    ProcessState,
    SupervisorClient,
    SupervisorUnavailable,
)
from tests.watchdog_helpers import make_settings, running_supervisord, wait_until

pytestmark = pytest.mark.integration


def test_start_stop_state_pid(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with running_supervisord(settings, "sleep 1000"):
        client = SupervisorClient(settings)

        def all_started() -> dict[str, ProcessInfo] | None:
            procs = client.processes()
            return procs if all(i.pid for i in procs.values()) else None

        procs = wait_until(all_started, what="both workers started")
        assert sorted(procs) == ["primary_0", "primary_1"]
        info = procs["primary_0"]
        assert info.state is ProcessState.RUNNING and info.namespec == "primary:primary_0"
        # supervisord reports the pid right after its fork; the exec may still be to come.
        wait_until(lambda: psutil.Process(info.pid).name() == "sleep", what="the exec of sleep")
        assert psutil.Process(info.pid).ppid() == client.supervisord_pid()

        client.stop("primary_0")
        stopped = client.info("primary_0")
        assert stopped.state is ProcessState.STOPPED and stopped.pid == 0
        assert not psutil.pid_exists(info.pid) or psutil.Process(info.pid).status() == "zombie"
        client.stop("primary_0")  # stopping a stopped process is not an error

        client.start("primary_0")
        client.start("primary_0")  # nor is starting a started one

        def restarted() -> ProcessInfo | None:
            info = client.info("primary_0")
            return info if info.pid else None

        started = wait_until(restarted, what="primary_0 started again")
        assert started.state.alive and started.pid != info.pid
        assert client.info("primary_1").pid == procs["primary_1"].pid  # untouched


def test_exit_status_is_reported(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, primary__workers=1)
    with running_supervisord(settings, "sh -c 'echo model_load_failed; exit 4'"):
        client = SupervisorClient(settings)

        def exited() -> ProcessInfo | None:
            info = client.info("primary_0")
            return info if info.state.dead else None

        info = wait_until(exited, what="primary_0 exited")
        # startsecs = 0: even a fast exit keeps its code (EXITED, not BACKOFF).
        assert info.state is ProcessState.EXITED and info.exitstatus == 4
        assert "model_load_failed" in client.tail_log("primary_0")


def test_no_supervisord_is_a_clear_error(tmp_path: Path) -> None:
    client = SupervisorClient(make_settings(tmp_path), timeout=1.0)
    with pytest.raises(SupervisorUnavailable, match="sentiguard up"):
        client.processes()

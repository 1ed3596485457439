"""What supervises the service can die (issue 16): real `up`, supervisord, gateway processes
and workers on loopback.

- supervisord SIGKILLed under load: `up` keeps the listener and the programs, starts a new
  supervisord and replaces the programs one by one (`runtime.takeover`); no connection is
  refused, nothing answers 5xx, and every program runs under the new supervisord.
- `up` SIGKILLed under load, then `sentiguard down`: every program stops on its own
  graceful stop; `down` kills nothing and leaves nothing running.

Counts, not times: the recovery time is reported by bench/chaos.py (docs/resilience.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sentiguard.chaos import supervision
from sentiguard.chaos.service import ServiceHandle, start_service
from sentiguard.runtime.paths import RunDir

CLIENTS = 8


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    svc = start_service(tmp_path_factory.mktemp("supervision"), workers=2, faults=False)
    try:
        yield svc
    finally:
        svc.stop()


def test_supervisord_sigkill_is_taken_over_refusing_nothing(service: ServiceHandle) -> None:
    result = supervision.supervisord_kill(service, clients=CLIENTS, after_s=2.0)
    summary = json.dumps(result.summary(), default=str)
    print(summary)  # pytest -rP shows the numbers
    extra = result.extra
    assert extra["new_supervisord"] != extra["old_supervisord"], summary
    assert extra["up_running"], summary
    assert extra["refused"] == 0, summary
    assert extra["server_errors"] == 0, summary
    # At most what the replaced gateway processes held when they had to go (the 16).
    assert extra["failed"] <= 2 * CLIENTS, summary
    expected = service.settings.gateway.processes + service.workers + 1  # + the watchdog
    assert len(extra["supervisorctl"]) == expected, summary
    assert set(extra["supervisorctl"].values()) == {"RUNNING"}, summary
    assert result.by_model.get("primary/None", 0) > 0, summary


def test_down_after_up_was_killed_stops_every_program_gracefully(service: ServiceHandle) -> None:
    # Runs last in this module: it ends the service.
    result = supervision.up_kill_then_down(service, clients=CLIENTS)
    summary = json.dumps(result.summary(), default=str, ensure_ascii=False)
    print(summary)
    assert result.extra["down_exit"] == 0, summary
    assert not result.extra["killed_by_down"], summary
    assert result.extra["left_running"] == [], summary
    # supervisord logs "killing ... with signal SIGKILL" when a program outlives its stop.
    supervisord_log = RunDir(service.settings).log("supervisord").read_text(errors="replace")
    assert "SIGKILL" not in supervisord_log, supervisord_log[-2000:]

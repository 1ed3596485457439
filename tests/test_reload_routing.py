"""Before a worker is taken away, every gateway process must route to the others again.

Fast tests with the control sockets and supervisord faked: `GatewayLink.wait_routable`
reads each gateway process's own view (`GET /control/workers/<name>`: ready, pid, breaker,
drain) and waits until all of them route to the worker; `Recycler` adds that wait to
"ready"; a reload stops before the next worker when a gateway never routes to the one it
brought back. The real-service proof is tests/test_reload_under_load.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sentiguard.runtime import drain, reload
from sentiguard.runtime.drain import GatewayLink, routes_to
from sentiguard.runtime.endpoints import Readiness
from sentiguard.runtime.recycle import Recycler
from sentiguard.settings import Settings
from tests.watchdog_helpers import FakeSupervisor, make_settings

READY = {"ready": True, "pid": 1001, "breaker": "closed", "drain": True, "in_flight": 0}


class ScriptedLink(GatewayLink):
    """A GatewayLink whose gateway processes answer GETs from `views` (gateway -> view of
    any worker), or `by_worker` (worker -> gateway -> view) when the test gives it, as
    changed by the test meanwhile; None for a gateway that does not answer. PUTs answer
    in_flight 0."""

    def __init__(
        self,
        settings: Settings,
        views: dict[str, Any],
        by_worker: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(settings, lambda event, **fields: None)
        self.views = views
        self.by_worker = by_worker or {}
        self.asked = 0
        self.puts: list[tuple[str, bool]] = []

    def request_each(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        worker = path.rsplit("/", 1)[-1]
        if method == "PUT":
            self.puts.append((worker, bool((body or {}).get("drain"))))
            return {gw: {"in_flight": 0} for gw in self.views}
        self.asked += 1
        views = self.by_worker.get(worker, self.views)
        return {gw: dict(v) for gw, v in views.items() if v is not None}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, gateway__processes=2)


@pytest.mark.parametrize(
    ("view", "pid", "undrained", "expected"),
    [
        (READY, 1001, False, True),
        (READY, None, False, True),
        (READY, 1001, True, False),  # still drained
        ({**READY, "pid": 1000}, 1001, False, False),  # the old process
        ({**READY, "ready": False}, 1001, False, False),
        ({**READY, "breaker": "open"}, 1001, False, False),
        ({**READY, "breaker": "half_open"}, 1001, False, True),
        ({"name": "primary_0", "in_flight": 0, "drain": False}, 1001, False, None),
    ],
)
def test_routes_to_reads_one_gateways_view(
    view: dict[str, Any], pid: int | None, undrained: bool, expected: bool | None
) -> None:
    assert routes_to(view, pid, undrained) is expected


def test_waits_until_every_gateway_routes_to_the_new_process(settings: Settings) -> None:
    views: dict[str, Any] = {"gateway_0": READY, "gateway_1": {**READY, "ready": False}}
    link = ScriptedLink(settings, views)

    def second_sees_it() -> None:
        while link.asked < 3:
            time.sleep(0.01)
        views["gateway_1"] = READY

    helper = threading.Thread(target=second_sees_it)
    helper.start()
    routed = link.wait_routable("primary_0", 1001, threading.Event(), 5.0, poll_s=0.01)
    helper.join()
    assert routed.ok and routed.how == "views"
    assert link.asked >= 3, "it returned before gateway_1 saw the worker ready"


def test_a_gateway_that_never_routes_is_named_at_the_deadline(settings: Settings) -> None:
    views = {"gateway_0": READY, "gateway_1": {**READY, "breaker": "open"}}
    routed = ScriptedLink(settings, views).wait_routable(
        "primary_0", 1001, threading.Event(), 0.2, poll_s=0.01
    )
    assert not routed.ok
    assert len(routed.waiting) == 1 and routed.waiting[0].startswith("gateway_1 (")
    assert "breaker open" in routed.waiting[0]


def test_no_gateway_answering_waits_for_nothing(settings: Settings) -> None:
    link = ScriptedLink(settings, {"gateway_0": None, "gateway_1": None})
    routed = link.wait_routable("primary_0", 1001, threading.Event(), 5.0)
    assert routed.ok and routed.how == "no_gateway" and routed.waited_s < 1.0


def test_a_gateway_that_cannot_say_gets_its_pollers_lag(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain, "ROUTING_LAG_S", 0.3)
    old_answer = {"name": "primary_0", "in_flight": 0, "drain": True}
    link = ScriptedLink(settings, {"gateway_0": READY, "gateway_1": old_answer})
    started = time.monotonic()
    routed = link.wait_routable("primary_0", 1001, threading.Event(), 5.0)
    assert routed.ok and routed.how == "lag"
    assert time.monotonic() - started >= 0.3


def test_the_recycler_counts_ready_only_once_every_gateway_routes(settings: Settings) -> None:
    supervisor = FakeSupervisor(["primary_0", "primary_1"])
    views: dict[str, Any] = {"gateway_0": {**READY, "ready": False}, "gateway_1": READY}
    link = ScriptedLink(settings, views)
    recycler = Recycler(
        settings,
        supervisor,  # type: ignore[arg-type]
        threading.Event(),
        ready_probe=lambda port, timeout: Readiness(True, "v1", 1001),
        poll_s=0.01,
        gateway=link,
    )

    def gateway_0_sees_it() -> None:
        while link.asked < 3:
            time.sleep(0.01)
        views["gateway_0"] = READY

    helper = threading.Thread(target=gateway_0_sees_it)
    helper.start()
    outcome = recycler.start_and_wait("primary_0", 5.0)
    helper.join()
    assert outcome.ready and outcome.pid == 1001
    assert outcome.routed is not None and outcome.routed.ok and link.asked >= 3


def test_without_a_gateway_link_ready_is_the_workers_own(settings: Settings) -> None:
    recycler = Recycler(
        settings,
        FakeSupervisor(["primary_0"]),  # type: ignore[arg-type]
        threading.Event(),
        ready_probe=lambda port, timeout: Readiness(True, "v1", 1001),
        poll_s=0.01,
    )
    outcome = recycler.start_and_wait("primary_0", 5.0)
    assert outcome.ready and outcome.routed is None


def test_a_reload_stops_before_the_next_worker_when_a_gateway_never_routes_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """gateway_1 never sees the reloaded primary_0 (pid 1001) ready: taking primary_1 away
    would leave it only the fallback, so primary_1 is left alone and the reload exits 1."""
    monkeypatch.setattr(drain, "ROUTABLE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(reload, "ROUTABLE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(reload, "probe_ready", lambda port, timeout: Readiness(True, "v2", None))
    supervisor = FakeSupervisor(["primary_0", "primary_1"])
    serving = {"ready": True, "pid": 101, "breaker": "closed", "drain": False}
    link = ScriptedLink(
        settings,
        {"gateway_0": READY, "gateway_1": READY},
        by_worker={
            "primary_0": {"gateway_0": READY, "gateway_1": {**READY, "pid": 100}},
            "primary_1": {"gateway_0": serving, "gateway_1": serving},
        },
    )
    job = reload.Reload(settings, "v2", lambda event, **fields: None)  # type: ignore[arg-type]
    job.supervisor = supervisor  # type: ignore[assignment]
    job.gateway = link
    job.recycler = Recycler(
        settings,
        supervisor,  # type: ignore[arg-type]
        job.stop,
        ready_probe=lambda port, timeout: Readiness(True, "v2", 1001),
        poll_s=0.01,
        gateway=link,
    )
    assert job.run() == 1
    out = capsys.readouterr().out
    assert "gateway_1 (ready True, pid 100" in out, out
    assert "Not moved: primary_1" in out, out
    assert ("start", "primary_1") not in supervisor.calls and ("stop", "primary_1") not in (
        supervisor.calls
    )
    assert ("primary_1", True) not in link.puts, "primary_1 was drained"
    assert link.puts[-1] == ("primary_0", False), "primary_0 was left drained"


class ReportTimes(GatewayLink):
    """The watchdog's summaries as the gateways saw them: one list of times per poll."""

    def __init__(self, settings: Settings, polls: list[list[float]]) -> None:
        super().__init__(settings, lambda event, **fields: None)
        self.polls = polls
        self.asked = 0

    def watchdog_report_times(self) -> list[float]:
        self.asked += 1
        return self.polls[min(self.asked, len(self.polls)) - 1]


def test_a_lock_change_waits_for_a_watchdog_round_that_began_after_it(
    settings: Settings,
) -> None:
    """The first summary after the change may close a round that read the old lock: only
    a second, later one proves a round read the new one."""
    since = 100.0
    polls = [[99.0], [100.05], [100.6], [100.65], [101.2]]
    link = ReportTimes(settings, polls)
    assert link.wait_watchdog_caught_up(since, threading.Event(), 5.0, poll_s=0.001)
    assert link.asked == 5, "it went on before the second summary after the change"


def test_no_watchdog_reporting_means_nothing_to_wait_for(settings: Settings) -> None:
    link = ReportTimes(settings, [[]])
    assert link.wait_watchdog_caught_up(100.0, threading.Event(), 5.0)
    assert link.asked == 1


def test_a_watchdog_that_stops_reporting_ends_the_wait_at_its_deadline(
    settings: Settings,
) -> None:
    link = ReportTimes(settings, [[99.0]])
    assert not link.wait_watchdog_caught_up(100.0, threading.Event(), 0.2, poll_s=0.01)

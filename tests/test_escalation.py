"""Escalation (issue 11, item 5): a gateway process or the watchdog that supervisord cannot
keep running makes `up` stop everything and exit `ExitCode.PROGRAM_FATAL` (69) naming the
program and its last log lines, so systemd, Docker or Kubernetes restart the whole service.
Primary workers never do: a worker that cannot start is the watchdog's to park.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from sentiguard.chaos.client import wait_until
from sentiguard.chaos.service import start_service
from sentiguard.errors import ExitCode
from sentiguard.runtime.escalation import BACKOFF_FIRST_S, CRASH_LOOP_STARTS, Decision, Keeper
from sentiguard.settings import ROOT


def info(group: str, name: str, state: str = "RUNNING", start: float = 1000.0, **kw: Any) -> Any:
    return {
        "group": group,
        "name": name,
        "statename": state,
        "start": start,
        "exitstatus": kw.get("exitstatus", 0),
        "spawnerr": kw.get("spawnerr", ""),
        "stdout_logfile": kw.get("stdout_logfile", ""),
    }


def test_a_fatal_gateway_is_restarted_with_backoff_while_a_sibling_serves() -> None:
    keeper = Keeper(watchdog_down_limit_s=600, started_at=1000.0)
    infos = [info("gateway", "gateway_0"), info("gateway", "gateway_1", "FATAL")]
    assert keeper.decide(infos, 1001.0) == Decision()  # the backoff starts
    assert keeper.decide(infos, 1001.0 + BACKOFF_FIRST_S) == Decision(start=("gateway_1",))
    assert keeper.decide(infos, 1002.0 + BACKOFF_FIRST_S).start == ()  # doubled now
    assert keeper.programs["gateway_1"].backoff_s() == 2 * BACKOFF_FIRST_S


def test_only_every_gateway_fatal_is_escalated(tmp_path: Path) -> None:
    log = tmp_path / "gateway_1.log"
    log.write_text('{"event":"fallback_load_failed"}\n')
    keeper = Keeper(watchdog_down_limit_s=600, started_at=1000.0)
    infos = [
        info("gateway", "gateway_0", "FATAL"),
        info("gateway", "gateway_1", "FATAL", exitstatus=4, stdout_logfile=str(log)),
    ]
    verdict = keeper.decide(infos, 1001.0).verdict
    assert verdict is not None and "no gateway process can stay up" in verdict.reason
    assert verdict.tail[-1] == '{"event":"fallback_load_failed"}'


def test_a_crash_loop_is_reported_never_escalated() -> None:
    keeper = Keeper(watchdog_down_limit_s=600, started_at=1000.0)
    now = 1000.0
    for n in range(CRASH_LOOP_STARTS * 2):
        now += 4
        infos = [info("gateway", "gateway_0", start=now), info("gateway", "gateway_1")]
        assert keeper.decide(infos, now) == Decision(), n
    assert any("restarted" in p for p in keeper.report(now)["problems"])


def test_the_watchdog_escalates_only_after_its_down_limit() -> None:
    keeper = Keeper(watchdog_down_limit_s=600, started_at=1000.0)
    infos = [info("gateway", "gateway_0"), info("watchdog", "watchdog", "FATAL")]
    assert keeper.decide(infos, 1500.0).verdict is None
    assert keeper.decide(infos, 1601.0).verdict is not None
    workers = [info("gateway", "gateway_0"), info("primary", "primary_0", "FATAL")]
    assert Keeper(600, 1000.0).decide(workers, 5000.0) == Decision()


def test_readme_and_unit_document_the_exit_code() -> None:
    code = str(int(ExitCode.PROGRAM_FATAL))
    readme = (ROOT / "README.md").read_text()
    assert f"`{code}`" in readme and "gateway.processes" in readme
    unit = (ROOT / "deploy" / "sentiguard.service").read_text()
    assert "Restart=on-failure" in unit and code in unit


def up_events(output: Path) -> list[dict[str, Any]]:
    events = []
    for line in output.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "event" in doc:
            events.append(doc)
    return events


@pytest.mark.integration
@pytest.mark.slow
def test_a_gateway_that_cannot_start_stops_up_with_program_fatal(tmp_path: Path) -> None:
    """The gateway's fallback model is missing: each gateway process exits 4 at once,
    supervisord retries with backoff, gives up (FATAL), and `up` escalates."""
    svc = start_service(
        tmp_path,
        workers=1,
        faults=False,
        overrides={"fallback.model": str(tmp_path / "no-such-model")},
        wait=False,
    )
    try:
        # supervisord's own backoff: 1 + 2 + ... + START_RETRIES s, plus the stop.
        wait_until(lambda: svc.proc.poll() is not None, 180, "`up` to give up", 0.5)
        tree = svc.tree()
        assert svc.proc.returncode == ExitCode.PROGRAM_FATAL, svc.diagnostics()
        events = {e["event"]: e for e in up_events(svc.output)}
        escalated = events["escalate"]
        assert escalated["program"].startswith("gateway_")
        # Usually FATAL (each start fails within startsecs); on a loaded machine a failing
        # start can outlast startsecs, count as a run, and escalate as a crash loop.
        assert escalated["state"] == "FATAL" or "keeps dying" in escalated["reason"], escalated
        assert any("fallback_load_failed" in line for line in escalated["log_tail"]), escalated
        assert "sentiguard doctor" in escalated["fix"]
        assert events["stopped"]["exit_code"] == ExitCode.PROGRAM_FATAL
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        svc.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_that_cannot_start_never_stops_the_service(tmp_path: Path) -> None:
    svc = start_service(
        tmp_path,
        workers=1,
        faults=False,
        overrides={"primary.model": str(tmp_path / "no-such-model")},
        wait=False,
    )
    try:
        wait_until(
            lambda: svc.status()["workers"][0]["state"] == "parked",
            300,
            "the worker parked by the watchdog",
            0.5,
        )
        # Longer than `up`'s check interval: still running, still answering.
        wait_until(
            lambda: svc.analyze("很好").status == 200 and svc.proc.poll() is None,
            10,
            "a fallback answer",
        )
        events = [e["event"] for e in up_events(svc.output)]
        assert "escalate" not in events
        assert svc.proc.poll() is None
    finally:
        svc.stop()

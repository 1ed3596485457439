"""The steps of taking a worker down and bringing it back, shared by the watchdog and reload.

A recycle is: drain at the gateway (`drain.GatewayLink`), take the worker down (a
graceful supervisord stop, or SIGKILL of the whole tree when it is hung), start it through
supervisord, wait until its `/ready` passes and every gateway process routes to it again,
undrain. The callers own the sequencing and the logging; these functions only do one step
each and report what happened.

Why the wait for the gateways: each gateway process learns readiness from its own poller,
up to `drain.ROUTING_LAG_S` after the worker's `/ready` passed. A caller that takes the
next worker away before then (a reload moving on, the watchdog recycling the other one)
leaves that gateway no worker at all for a moment: measured, 32 of 3,277 answers from the
fallback (`primary_down`) in one reload under 4 clients, all in the 0.1 s after the first
worker's undrain.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sentiguard.runtime.drain import GatewayLink, Routable
from sentiguard.runtime.endpoints import Readiness, probe_ready, worker_port
from sentiguard.runtime.memory import kill_tree
from sentiguard.runtime.supervisor_client import (
    ProcessState,
    SupervisorClient,
    SupervisorUnavailable,
)
from sentiguard.settings import Settings

# No start waits longer than this many `watchdog.start_timeout_s` windows (the watchdog's
# policy, a reload and `up`'s takeover alike), however busy the machine.
START_CAP_FACTOR = 8


@dataclass(frozen=True)
class StartOutcome:
    """How a wait for readiness ended.

    `why` is "ready", "exited" (the process died: see `exitstatus`), "stopped" (someone
    stopped it), "timeout" (alive but not ready in time) or "shutdown" (the waiter was
    asked to stop). When ready and the recycler has a gateway link, `routed` says whether
    every gateway process routes to it (`GatewayLink.wait_routable`); `waited_s` includes
    that wait.
    """

    why: str
    pid: int = 0
    exitstatus: int = 0
    model_version: str | None = None
    waited_s: float = 0.0
    routed: Routable | None = None

    @property
    def ready(self) -> bool:
        return self.why == "ready"


class Recycler:
    """One step at a time of a worker's way down and back up. Safe to use from threads."""

    def __init__(
        self,
        settings: Settings,
        supervisor: SupervisorClient,
        stop: threading.Event,
        *,
        kill: Callable[[int], list[int]] = kill_tree,
        ready_probe: Callable[[int, float], Readiness] = probe_ready,
        poll_s: float = 0.2,
        gateway: GatewayLink | None = None,
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.stop_event = stop
        self.kill = kill
        self.ready_probe = ready_probe
        self.poll_s = poll_s
        self.gateway = gateway  # None: "ready" means the worker's /ready alone

    def take_down(self, name: str, pid: int, hung: bool) -> list[int]:
        """Stop the worker; when hung, SIGKILL its tree first. Returns the pids killed.

        A hung worker would ignore SIGTERM and supervisord's stop would wait stopwaitsecs
        before escalating, so we kill it ourselves and only wait for supervisord to notice.
        """
        killed: list[int] = []
        if hung and pid:
            killed = self.kill(pid)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if not self.supervisor.info(name).state.alive:
                    break
                self.stop_event.wait(0.05)
        # A no-op when the kill already left it EXITED; moves BACKOFF to STOPPED.
        self.supervisor.stop(name)
        return killed

    def start_and_wait(
        self, name: str, timeout_s: float, want_version: str | None = None
    ) -> StartOutcome:
        self.supervisor.start(name)
        return self.wait_ready(name, timeout_s, want_version)

    def wait_ready(
        self, name: str, timeout_s: float, want_version: str | None = None
    ) -> StartOutcome:
        """Poll supervisord and the worker's /ready until it is ready, dies or times out.

        Ready means: /ready answers 200, from the process supervisord started (when the
        worker reports its pid) and, when `want_version` is given, with that model_version.
        """
        port = worker_port(self.settings, name)
        started = time.monotonic()
        deadline = started + timeout_s
        pid = 0
        while True:
            waited = round(time.monotonic() - started, 2)
            try:
                info = self.supervisor.info(name)
            except SupervisorUnavailable:
                info = None
            if info is not None:
                pid = info.pid or pid  # keep the pid of a process that just died
                if info.state.dead:
                    return StartOutcome("exited", pid, info.exitstatus, waited_s=waited)
                if info.state in (ProcessState.STOPPED, ProcessState.STOPPING):
                    return StartOutcome("stopped", pid, waited_s=waited)
                if info.state.alive:
                    r = self.ready_probe(port, max(0.2, self.poll_s))
                    same_process = r.pid is None or r.pid == info.pid
                    right_model = want_version is None or r.model_version == want_version
                    if r.ready and same_process and right_model:
                        return self._routed(
                            name, StartOutcome("ready", pid, model_version=r.model_version), started
                        )
            if time.monotonic() >= deadline:
                return StartOutcome("timeout", pid, waited_s=waited)
            if self.stop_event.wait(self.poll_s):
                return StartOutcome("shutdown", pid, waited_s=waited)

    def _routed(self, name: str, outcome: StartOutcome, started: float) -> StartOutcome:
        """`outcome` (ready) once every gateway routes to it, or said it does not in time."""
        routed = None
        if self.gateway is not None:
            routed = self.gateway.wait_routable(name, outcome.pid, self.stop_event)
        waited = round(time.monotonic() - started, 2)
        return replace(outcome, waited_s=waited, routed=routed)


def load_failure(log_tail: str) -> dict[str, Any]:
    """The last `model_load_failed` line a worker logged: {"cause": ..., "fix": ...} or {}."""
    for line in reversed(log_tail.splitlines()):
        if "model_load_failed" not in line:
            continue
        try:
            record = json.loads(line[line.index("{") :])
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "model_load_failed":
            return {k: record[k] for k in ("cause", "fix") if k in record}
    return {}

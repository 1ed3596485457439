"""The watchdog's side of the gateways' control sockets: drain, undrain, report.

There is one control socket per gateway process (`<run_dir>/control_I.sock`, I below
`gateway.processes`); every report and every drain goes to each of them, since each process
routes on its own view. Contract (docs/internals.md): `PUT /control/workers/<name>` with the
worker's state and a `drain` flag answers `{"name", "in_flight", "drain"}`; a drain waits for
the sum of `in_flight` over every gateway that answered; `PUT /control/watchdog` takes the
summary. The gateways route safely without us (their own breakers), so an unreachable
gateway process is logged once when it goes away and once when it comes back (with its name,
`gateway_I`), and never stops the watchdog from restarting workers. A gateway process
restarted in the middle of a drain learns it from the next report, which repeats it.

A gateway that is still starting is not an outage: supervisord starts every program at
once, and a gateway opens its control socket only after loading its fallback model. Until
a gateway process was reached once, a missing, refusing or silent socket is not logged for
`start_grace_s` (default `watchdog.start_timeout_s`). A missing secret is logged at once
(`up` writes it before anything starts), and so is any failure after the first contact. A
gateway that timed out is skipped for `SKIP_AFTER_TIMEOUT_S`, so one stopped process cannot
slow every round by a timeout per request.

Each gateway process learns a worker's readiness from its own poller, not from us, so a
worker that answers `/ready` is not yet one every gateway routes to. Before a recycle or a
reload takes the next worker away, `wait_routable` waits until every gateway process that
answers says it routes to this one: `GET /control/workers/<name>` shows `ready` with the
new `pid` and a breaker that is not open (and, with `undrained=True`, no drain). A gateway
whose answer does not carry `ready` (an older control app) cannot say: then the wait is
the time its poller needs to see any change, `ROUTING_LAG_S`.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentiguard.gateway.readiness import POLL_INTERVAL_S, POLL_TIMEOUT_S
from sentiguard.runtime.control import ControlClient
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.supervisord import gateway_process_name
from sentiguard.settings import Settings

Body = dict[str, Any]
LogEvent = Callable[..., None]  # log(event, **fields): an EventLog, or the DecisionLog
SKIP_AFTER_TIMEOUT_S = 2.0
# A gateway's poller asks every POLL_INTERVAL_S and waits at most POLL_TIMEOUT_S: it has
# seen a change by then (one slow poll late, at worst).
ROUTING_LAG_S = POLL_INTERVAL_S + POLL_TIMEOUT_S
# How long `wait_routable` waits by default: several polls, each of them slow.
ROUTABLE_TIMEOUT_S = 5 * ROUTING_LAG_S


@dataclass(frozen=True)
class Routable:
    """How `wait_routable` ended: `ok` when every gateway that answered routes to the worker.

    `waiting` names the gateway processes that still did not when the wait ended (each with
    what it said); `how` is "views" (they said so), "lag" (they could not say: we waited
    `ROUTING_LAG_S`), "no_gateway" (none answered: nothing to wait for) or "stopped".
    """

    ok: bool
    waited_s: float
    how: str
    waiting: tuple[str, ...] = ()


def routes_to(view: Any, pid: int | None, undrained: bool) -> bool | None:
    """Whether one gateway's view of a worker says it routes there; None: it cannot say."""
    if not isinstance(view, dict) or "ready" not in view:
        return None
    return (
        view.get("ready") is True
        and (pid is None or view.get("pid") == pid)
        and view.get("breaker") != "open"
        and not (undrained and view.get("drain"))
    )


def describe(view: Any) -> str:
    if not isinstance(view, dict):
        return "no answer"
    keys = ("ready", "pid", "breaker", "drain")
    return ", ".join(f"{k} {view.get(k)}" for k in keys if k in view)


@dataclass
class Endpoint:
    """One gateway process's control socket and what we know of it."""

    name: str
    path: Path
    reachable: bool | None = None  # None: not reached yet
    skip_until: float = 0.0


class GatewayLink:
    """Thread-safe: the loop reports while action threads drain."""

    def __init__(
        self,
        settings: Settings,
        log: LogEvent,
        timeout_s: float = 1.0,
        start_grace_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.log = log
        self.timeout_s = timeout_s
        grace = settings.watchdog.start_timeout_s if start_grace_s is None else start_grace_s
        self.clock = clock
        self._grace_until = clock() + grace
        self._lock = threading.Lock()
        run = RunDir(settings)
        self.endpoints = [
            Endpoint(gateway_process_name(i), run.control_socket_for(i))
            for i in range(settings.gateway.processes)
        ]

    def _starting(self, endpoint: Endpoint) -> bool:
        """Never reached and still within the start grace: the gateway may be loading."""
        with self._lock:
            return endpoint.reachable is None and self.clock() < self._grace_until

    def _note(self, endpoint: Endpoint, ok: bool, error: str | None = None) -> None:
        with self._lock:
            before, endpoint.reachable = endpoint.reachable, ok
        if ok and before is False:
            self.log("gateway_reachable", gateway=endpoint.name, action="resume reports")
        elif not ok and before is not False:
            self.log(
                "gateway_unreachable",
                gateway=endpoint.name,
                reason=error,
                action="keep watching and restarting; drains skip it until it is back",
                fix=f"check `sentiguard status` and logs/{endpoint.name}.log",
            )

    def _one(self, endpoint: Endpoint, method: str, path: str, body: Body) -> Any | None:
        if self.clock() < endpoint.skip_until:
            return None
        try:
            # A fresh client each time re-reads the secret, so a new `up` is picked up.
            client = ControlClient(self.settings, timeout=self.timeout_s)
        except OSError as e:
            self._note(endpoint, False, f"{type(e).__name__}: {e}")
            return None
        client.path = endpoint.path
        try:
            status, answer = client.request(method, path, body)
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as e:
            if isinstance(e, TimeoutError):
                endpoint.skip_until = self.clock() + SKIP_AFTER_TIMEOUT_S
            if not self._starting(endpoint):
                self._note(endpoint, False, f"{type(e).__name__}: {e}")
            return None
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._note(endpoint, False, f"{type(e).__name__}: {e}")
            return None
        if status != 200:
            self._note(endpoint, False, f"{method} {path} answered {status}: {answer}")
            return None
        self._note(endpoint, True)
        return answer

    def request(self, method: str, path: str, body: Body) -> list[Any]:
        """One control request to every gateway process; the answers of those that
        answered (a once-only log line for each that is away)."""
        return list(self.request_each(method, path, body).values())

    def request_each(self, method: str, path: str, body: Body | None = None) -> dict[str, Any]:
        """Like `request`, by gateway process name (`gateway_I`), for those that answered."""
        answers = {e.name: self._one(e, method, path, body or {}) for e in self.endpoints}
        return {name: a for name, a in answers.items() if a is not None}

    def watchdog_report_times(self) -> list[float]:
        """When (time.monotonic(), to ~0.1 s) each answering gateway last got the
        watchdog's summary (`GET /control/local`); gateways without one are left out."""
        views = self.request_each("GET", "/control/local")
        now = time.monotonic()
        times = []
        for view in views.values():
            watchdog = view.get("watchdog") if isinstance(view, dict) else None
            if not isinstance(watchdog, dict) or watchdog.get("stale"):
                continue
            age = watchdog.get("last_report_age_s")
            if isinstance(age, int | float):
                times.append(now - float(age))
        return times

    def wait_watchdog_caught_up(
        self, since: float, stop: threading.Event, timeout_s: float, poll_s: float = 0.1
    ) -> bool:
        """Wait until the watchdog finished a round that began after `since` (monotonic).

        The watchdog reads `reload.lock` at the start of a round and sends its reports at
        the end: a round under way when the lock changed can still send the old drain flag
        (measured: a reload's undrain of primary_0 overtaken 50 ms later by such a report,
        while primary_1 was drained: both away, 97 answers from the fallback). Its rounds
        run one after another and each ends with a summary to every gateway, so the second
        summary after `since` closes a round that read the lock after it. True when seen,
        or when no gateway has a live watchdog report (nobody sends stale ones); False at
        `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        seen: list[float] = []
        while True:
            times = self.watchdog_report_times()
            if not times:
                return True
            latest = max(times)
            # Ages come rounded to 0.1 s: a summary counts once it is clearly after.
            if latest > since + 0.1 and (not seen or latest > seen[-1] + 0.2):
                seen.append(latest)
            if len(seen) >= 2:
                return True
            if time.monotonic() >= deadline or stop.wait(poll_s):
                return False

    def wait_routable(
        self,
        name: str,
        pid: int | None,
        stop: threading.Event,
        timeout_s: float | None = None,
        undrained: bool = False,
        poll_s: float = 0.1,
    ) -> Routable:
        """Wait until every gateway process that answers routes to `name` (process `pid`,
        when given): ready, breaker not open, and with `undrained`, not drained; at most
        `timeout_s` (default `ROUTABLE_TIMEOUT_S`).

        Call it before taking another worker away: until then, a gateway that has not seen
        this one come back would send that worker's share to the fallback. Never waits on
        a gateway that does not answer (it routes nothing, or will learn on its own).
        """
        started = time.monotonic()
        deadline = started + (ROUTABLE_TIMEOUT_S if timeout_s is None else timeout_s)
        while True:
            waited = round(time.monotonic() - started, 2)
            views = self.request_each("GET", f"/control/workers/{name}")
            if not views:
                return Routable(True, waited, "no_gateway")
            said = {gw: routes_to(view, pid, undrained) for gw, view in views.items()}
            waiting = tuple(
                f"{gw} ({describe(views[gw])})" for gw, ok in said.items() if ok is False
            )
            if not waiting:
                if None not in said.values():
                    return Routable(True, waited, "views")
                # Some cannot tell us: give their pollers the time they need to see it.
                stop.wait(max(0.0, started + ROUTING_LAG_S - time.monotonic()))
                return Routable(True, round(time.monotonic() - started, 2), "lag")
            if time.monotonic() >= deadline:
                return Routable(False, waited, "views", waiting)
            if stop.wait(poll_s):
                return Routable(False, waited, "stopped", waiting)

    def put_worker(self, name: str, body: Body) -> int | None:
        """Report one worker to every gateway; returns the sum of their `in_flight` for it,
        or None when no gateway answered."""
        answers = [a for a in self.request("PUT", f"/control/workers/{name}", body) if a]
        if not answers:
            return None
        counts = [a.get("in_flight") if isinstance(a, dict) else 0 for a in answers]
        return sum(n for n in counts if isinstance(n, int))

    def put_watchdog(self, body: Body) -> bool:
        """The summary to every gateway; True when at least one took it."""
        return bool(self.request("PUT", "/control/watchdog", body))

    def drain_and_wait(
        self,
        name: str,
        body: Callable[[], Body],
        timeout_s: float,
        stop: threading.Event,
        poll_s: float = 0.1,
    ) -> tuple[int | None, float]:
        """Drain `name` at every gateway and wait until its in-flight requests (summed over
        them) finish or `timeout_s` passes.

        `body()` builds the report (with `"drain": true`); it is re-sent on every poll, so a
        report racing it from another process cannot undrain the worker for long, and a
        gateway process that restarts meanwhile learns of the drain.
        Returns (in_flight at the end or None if no gateway answered, seconds waited).
        """
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            in_flight = self.put_worker(name, body())
            if in_flight is None or in_flight == 0 or time.monotonic() >= deadline:
                return in_flight, round(time.monotonic() - started, 2)
            if stop.wait(poll_s):
                return in_flight, round(time.monotonic() - started, 2)

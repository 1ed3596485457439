"""Everything the gateway holds, and the /health, /ready and /status bodies built from it.

These bodies are built from memory only, never by asking a worker (which may be hung),
so the three endpoints answer at once whatever the workers do. With several gateway
processes, /status adds the other processes' own views (`siblings.Siblings`, asked over
their control sockets with a short timeout); /health and /ready are this process's.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from sentiguard.gateway.admission import FallbackAdmission
from sentiguard.gateway.incidents import DecisionHistory
from sentiguard.gateway.routing import Fallback
from sentiguard.gateway.siblings import Siblings
from sentiguard.gateway.workers import WorkerPool

# The watchdog reports every second or so; ten seconds of silence means it is gone.
WATCHDOG_STALE_S = 10.0
# `up` rewrites <run_dir>/programs.json every second; older than this, `up` is gone.
PROGRAMS_STALE_S = 10.0


def read_programs(path: Path | None) -> dict[str, Any] | None:
    """`up`'s report on the gateway processes and the watchdog (`runtime.escalation`):
    their states, crash loops and restarts, with its age; None without one."""
    if path is None:
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    age = time.time() - float(report.get("updated") or 0)
    report["age_s"] = round(age, 1)
    report["stale"] = age > PROGRAMS_STALE_S
    return report


@dataclass
class WatchdogReport:
    """The last `PUT /control/watchdog` body and when it came."""

    body: dict[str, Any] = field(default_factory=dict)
    received_at: float | None = None

    def view(self) -> dict[str, Any]:
        age = None if self.received_at is None else time.monotonic() - self.received_at
        return {
            "pid": self.body.get("pid"),
            "limits": self.body.get("limits", {}),
            "decisions": self.body.get("decisions", []),
            "last_report_age_s": None if age is None else round(age, 1),
            "stale": age is None or age > WATCHDOG_STALE_S,
        }


@dataclass
class GatewayProcessInfo:
    """This gateway process, for `/status` `gateways`: `name` is supervisord's (`gateway_I`).
    `restarts` is None until the process learns it (supervisord's count of its restarts,
    `runtime.supervisord.restarts`, read at start)."""

    index: int = 0
    name: str = "gateway_0"
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=lambda: psutil.Process().create_time())
    restarts: int | None = None

    def view(self) -> dict[str, Any]:
        uptime = round(time.time() - self.started, 1)  # since the process started
        return {
            "name": self.name,
            "index": self.index,
            "pid": self.pid,
            "uptime_s": uptime,
            "restarts": self.restarts,
            "reachable": True,
        }


class GatewayState:
    """Shared by the public app, the control app, the router and the server's shutdown."""

    def __init__(self, pool: WorkerPool, admission: FallbackAdmission, fallback: Fallback) -> None:
        self.pool = pool
        self.admission = admission
        self.fallback = fallback
        self.watchdog = WatchdogReport()
        self.process = GatewayProcessInfo()
        # Where `up` reports the programs it keeps (set when run under `sentiguard up`).
        self.programs_path: Path | None = None
        # The other gateway processes (set by the process when there are several).
        self.siblings: Siblings | None = None
        # A report carries only the watchdog's last few decisions; the ops page's timeline
        # needs the window's, so they are kept here (bounded, deduplicated).
        self.decisions = DecisionHistory()
        self.shutting_down = threading.Event()
        self._lock = threading.Lock()
        self._active = 0

    # Requests being answered, so a SIGTERM can drain them before the process exits.
    def request_started(self) -> None:
        with self._lock:
            self._active += 1

    def request_finished(self) -> None:
        with self._lock:
            self._active -= 1

    @property
    def active_requests(self) -> int:
        with self._lock:
            return self._active

    def record_watchdog(self, body: dict[str, Any]) -> None:
        self.watchdog = WatchdogReport(body=body, received_at=time.monotonic())
        self.decisions.add(body.get("decisions"))

    def health_reasons(self) -> list[str]:
        """Why the service is degraded, in an operator's words; empty when all is well."""
        reasons: list[str] = []
        workers = self.pool.snapshot()
        for w in workers:
            if w["state"] == "parked":
                reasons.append(f"{w['name']} is parked (cannot start): {w['reason']}")
            elif not w["ready"] or w["drain"]:
                reasons.append(f"{w['name']} is not serving: {w['state']} ({w['reason']})")
            elif w["breaker"] != "closed":
                reasons.append(f"{w['name']} breaker {w['breaker']}: {w['reason']}")
        if not any(w["ready"] and not w["drain"] for w in workers):
            reasons.insert(0, "no primary worker is ready: the fallback answers every request")
        watchdog = self.watchdog.view()
        if watchdog["stale"] and self.watchdog.received_at is not None:
            # Never reported is a start-up, not a fault; silence after reports is.
            reasons.append(
                f"the watchdog has not reported for {watchdog['last_report_age_s']} s: "
                f"workers are not restarted; check `sentiguard status` and logs/watchdog.jsonl"
            )
        programs = read_programs(self.programs_path)
        if programs is not None and not programs["stale"]:
            reasons += [str(p) for p in programs.get("problems", [])]
        if self.shutting_down.is_set():
            reasons.insert(0, "shutting down: finishing in-flight requests")
        return reasons

    def health(self) -> dict[str, Any]:
        reasons = self.health_reasons()
        return {"status": "degraded" if reasons else "ok", "reasons": reasons}

    def ready(self) -> tuple[int, dict[str, Any]]:
        """200 whenever the gateway can answer (the fallback counts); 503 while stopping."""
        primary = self.pool.any_ready()
        if self.shutting_down.is_set():
            return 503, {"ready": False, "primary_ready": primary, "reason": "shutting_down"}
        return 200, {"ready": True, "primary_ready": primary}

    def fallback_view(self) -> dict[str, Any]:
        return {
            "capacity": self.admission.capacity,
            "in_use": self.admission.in_use,
            "shed_total": self.admission.shed_total,
            "model_version": self.fallback.version,
        }

    def workers(self) -> list[dict[str, Any]]:
        """The pool's snapshot; each worker's `capacity` is the requests this process may
        send it at once now (its learnt limit, at most its share of the ceiling)."""
        return self.pool.snapshot()

    def own_status(self) -> dict[str, Any]:
        """This process's /status body, before its siblings' views are added."""
        return {
            "workers": self.workers(),
            "fallback": self.fallback_view(),
            "watchdog": self.watchdog.view(),
            "gateways": [self.process.view()],
            "programs": read_programs(self.programs_path),
        }

    def status(self) -> dict[str, Any]:
        """The /status body for the whole service: every gateway process's counts."""
        own = self.own_status()
        return own if self.siblings is None else self.siblings.merge(own)

    def local_view(self) -> dict[str, Any]:
        """What a sibling adds to its /status (`GET /control/local`): this process's
        per-worker readiness and counts, its fallback, and itself."""
        workers = {
            w["name"]: {k: w[k] for k in ("ready", "in_flight", "capacity") if k in w}
            for w in self.workers()
        }
        watchdog = self.watchdog.view()
        return {
            "gateway": self.process.view(),
            "max_in_flight_per_worker": self.pool.max_in_flight,  # this process's share
            "workers": workers,
            "fallback": self.fallback_view(),
            "watchdog": {k: watchdog[k] for k in ("pid", "last_report_age_s", "stale")},
        }

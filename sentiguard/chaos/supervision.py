"""Faults of what supervises the service: gateway processes killed again and again,
supervisord killed, `up` killed (issue 16).

Counts per request as in `chaos.gateways` (`outcome`: an HTTP status, `refused`, `reset`,
`timeout`, `other`); tests assert counts against the service's own promises, timings go to
bench/chaos.py and docs/resilience.md.

- `gateway_churn`: SIGKILL a gateway process (each in turn) every `every_s` for
  `duration_s` under closed-loop load, while a probe times /metrics. Promise: nothing
  refused, `up` keeps running, no request lost but those in flight on the killed
  processes (the connections they held at each kill).
- `supervisord_kill`: SIGKILL supervisord under load. Promise: nothing refused, no 5xx,
  at most the requests in flight on the processes replaced, every worker ready again and
  `supervisorctl status` answering (`runtime.takeover`).
- `up_kill_then_down`: SIGKILL `up`, then `sentiguard down`: every program stops on its
  own graceful stop (`down` kills nothing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from sentiguard.chaos.client import http_request, wait_until
from sentiguard.chaos.gateways import established, outcome, tally
from sentiguard.chaos.load import Load, Sample
from sentiguard.chaos.scenarios import wait_for_traffic
from sentiguard.chaos.service import ServiceHandle
from sentiguard.chaos.timeline import Result
from sentiguard.runtime.paths import RunDir


class MetricsProbe:
    """GET /metrics every `every_s` in a thread; keeps each answer's latency (None: none)."""

    def __init__(self, port: int, every_s: float = 0.5, timeout_s: float = 5.0) -> None:
        self.port = port
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.latencies: list[float | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MetricsProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            started = time.monotonic()
            try:
                answer = http_request(self.port, "GET", "/metrics", timeout=self.timeout_s)
                ok = answer.status == 200
            except OSError:
                ok = False
            self.latencies.append(time.monotonic() - started if ok else None)

    def summary(self) -> dict[str, Any]:
        answered = [t for t in self.latencies if t is not None]
        return {
            "metrics_probes": len(self.latencies),
            "metrics_unanswered": len(self.latencies) - len(answered),
            "metrics_max_s": round(max(answered), 3) if answered else None,
        }


def _lost_after(samples: list[Sample], at: float) -> list[Sample]:
    return [s for s in samples if not s.status and s.start + s.latency_s >= at]


def gateway_churn(
    service: ServiceHandle,
    duration_s: float = 40.0,
    every_s: float = 4.0,
    clients: int = 8,
    after_s: float = 5.0,
) -> Result:
    """SIGKILL gateway process 0, 1, 0, ... every `every_s` for `duration_s` under load."""
    start = time.monotonic()
    kills: list[dict[str, Any]] = []
    processes = service.settings.gateway.processes
    with Load(service.port, clients) as load, MetricsProbe(service.port) as probe:
        wait_for_traffic(service, 4 * clients)
        at = time.monotonic()
        next_kill = at
        while time.monotonic() - at < duration_s:
            time.sleep(max(0.0, next_kill - time.monotonic()))  # the kill schedule
            name = f"gateway_{len(kills) % processes}"
            pid = service.gateway_pids().get(name, 0)
            if pid:
                held = established(pid, service.port)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills.append({"name": name, "pid": pid, "held": held})
            next_kill += every_s
        time.sleep(after_s)  # the measured window goes on past the last kill
        load.stop()
    result = Result("gateway_churn", time.monotonic() - start, load.snapshot())
    lost = _lost_after(result.samples, at)
    after = [s for s in result.samples if s.start + s.latency_s >= at]
    result.extra.update(
        clients=clients,
        kills=len(kills),
        held_at_kills=sum(k["held"] for k in kills),
        outcomes=tally(after),
        refused=sum(1 for s in lost if outcome(s) == "refused"),
        failed=len(lost),
        server_errors=sum(1 for s in after if s.status >= 500),
        up_running=service.proc.poll() is None,
        **probe.summary(),
    )
    return result


def supervisorctl_status(service: ServiceHandle, timeout_s: float = 10.0) -> dict[str, str]:
    """`supervisorctl -c <run_dir>/supervisord.conf status` as {program: STATE} (empty when
    it does not answer)."""
    conf = RunDir(service.settings).supervisord_conf
    try:
        out = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "status"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=service.env,
        ).stdout
    except subprocess.TimeoutExpired:
        return {}
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isupper():  # "gateway:gateway_0 RUNNING pid ..."
            states[parts[0]] = parts[1]
    return states


def _under_control(service: ServiceHandle) -> bool:
    states = supervisorctl_status(service)
    expected = service.settings.gateway.processes + service.workers + 1
    return len(states) == expected and all(s == "RUNNING" for s in states.values())


def supervisord_kill(
    service: ServiceHandle,
    clients: int = 8,
    after_s: float = 5.0,
    recover_timeout_s: float = 120.0,
) -> Result:
    """SIGKILL supervisord under `clients` closed-loop clients; keep the load on until every
    program runs under the new one, every worker is ready, and `after_s` more."""
    start = time.monotonic()
    with Load(service.port, clients) as load:
        wait_for_traffic(service, 4 * clients)
        old = int(service.rpc().supervisor.getPID())
        held = sum(established(pid, service.port) for pid in service.gateway_pids().values())
        at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_until(
            lambda: _under_control(service) and service.all_ready(),
            recover_timeout_s,
            "every program RUNNING under a new supervisord and every worker ready",
            0.5,
        )
        recovered_s = time.monotonic() - at
        time.sleep(after_s)
        load.stop()
    result = Result("supervisord_kill", time.monotonic() - start, load.snapshot())
    lost = _lost_after(result.samples, at)
    after = [s for s in result.samples if s.start + s.latency_s >= at]
    result.extra.update(
        clients=clients,
        old_supervisord=old,
        new_supervisord=int(service.rpc().supervisor.getPID()),
        gateway_connections_at_kill=held,
        outcomes=tally(after),
        refused=sum(1 for s in lost if outcome(s) == "refused"),
        failed=len(lost),
        server_errors=sum(1 for s in after if s.status >= 500),
        recovered_s=round(recovered_s, 2),
        up_running=service.proc.poll() is None,
        supervisorctl=supervisorctl_status(service),
    )
    return result


def up_kill_then_down(service: ServiceHandle, clients: int = 8) -> Result:
    """SIGKILL `up` under `clients` closed-loop clients, then `sentiguard down` (the load
    still running): what `down` said, how long it took, and whether it killed anything."""
    start = time.monotonic()
    programs = [p for p in service.tree() if p.pid != service.proc.pid]
    graceful = float(service.settings.service.graceful_timeout_s)
    with Load(service.port, clients) as load:
        wait_for_traffic(service, 50)
        os.kill(service.proc.pid, signal.SIGKILL)
        service.proc.wait()
        at = time.monotonic()
        down = service.cli("down", timeout=graceful + 30)
        down_s = time.monotonic() - at
    result = Result("up_kill_then_down", time.monotonic() - start, load.snapshot())
    output = (down.stdout + down.stderr).strip()
    result.extra.update(
        clients=clients,
        down_exit=down.returncode,
        down_s=round(down_s, 2),
        killed_by_down="killing pids" in output,
        left_running=[p.pid for p in programs if p.is_running() and p.status() != "zombie"],
        down_output=output[-300:],
    )
    return result

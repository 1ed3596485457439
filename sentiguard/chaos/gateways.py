"""Faults of the gateway processes themselves: a SIGKILL under load, a stop under load.

Both count what clients saw, per request (`outcome`): answered, `refused` (the connect was
refused), `reset` (the connection was reset or closed with the request unanswered: a request
lost mid-flight), `timeout`, or `other`. Tests assert counts against the service's own
promises; absolute times go to bench/chaos.py and docs/resilience.md.

- `gateway_kill`: SIGKILL one gateway process under closed-loop load. Promise: no connection
  refused (the socket `up` holds outlives the process, the others accept), and no request
  lost but those in flight on the killed process, bounded by the connections it held at
  the kill (`open_connections_at_kill`: each client sends one request at a time).
- `stop_under_load`: `sentiguard down` under closed-loop load. Promise: no reset; a request
  either gets its answer or its connection is refused (the listener closed everywhere first).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil

from sentiguard.chaos.client import wait_until
from sentiguard.chaos.load import Load, Sample
from sentiguard.chaos.scenarios import wait_for_traffic
from sentiguard.chaos.service import ServiceHandle
from sentiguard.chaos.timeline import Result

RESET_ERRORS = (
    "ConnectionResetError",
    "RemoteDisconnected",
    "BrokenPipeError",
    "IncompleteRead",
    "ConnectionAbortedError",
)


def outcome(sample: Sample) -> str:
    """What one request came to: its HTTP status, or how it failed without one."""
    if sample.status:
        return str(sample.status)
    error = sample.error or ""
    if "ConnectionRefusedError" in error:
        return "refused"
    if any(name in error for name in RESET_ERRORS):
        return "reset"
    if "timed out" in error or "TimeoutError" in error:
        return "timeout"
    return "other"


def tally(samples: list[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        key = outcome(s)
        counts[key] = counts.get(key, 0) + 1
    return counts


def established(pid: int, port: int) -> int:
    """TCP connections process `pid` holds on local port `port` (accepted clients)."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(
        1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    )


def _both_serving(service: ServiceHandle, name: str, old_pid: int) -> bool:
    pids = service.gateway_pids()
    if pids.get(name) in (None, 0, old_pid):
        return False
    gateways = service.status().get("gateways", [])
    return len(gateways) == len(pids) and all(g.get("reachable") for g in gateways)


def gateway_kill(
    service: ServiceHandle,
    clients: int = 16,
    index: int = 0,
    after_s: float = 10.0,
    recover_timeout_s: float = 60.0,
) -> Result:
    """SIGKILL gateway process `index` under `clients` closed-loop clients; keep the load on
    until its replacement serves and `after_s` has passed since the kill."""
    name = f"gateway_{index}"
    start = time.monotonic()
    with Load(service.port, clients) as load:
        wait_for_traffic(service, 4 * clients)
        pid = service.gateway_pids()[name]
        held = established(pid, service.port)
        at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: _both_serving(service, name, pid),
            recover_timeout_s,
            f"{name} (pid {pid}, killed) replaced and answering its siblings",
            0.1,
        )
        replaced_s = time.monotonic() - at
        time.sleep(max(0.0, at + after_s - time.monotonic()))  # the measured window
        load.stop()
    result = Result("gateway_kill", time.monotonic() - start, load.snapshot())
    after = [s for s in result.samples if s.start + s.latency_s >= at]
    lost = [s for s in result.samples if not s.status and s.start + s.latency_s >= at]
    answered_after = [s.start + s.latency_s - at for s in after if s.status and s.start >= at]
    result.extra.update(
        clients=clients,
        killed=name,
        killed_pid=pid,
        open_connections_at_kill=held,
        outcomes_after_kill=tally(after),
        refused=sum(1 for s in lost if outcome(s) == "refused"),
        failed=len(lost),
        failed_started_after_kill=sum(1 for s in lost if s.start >= at),
        first_answer_after_kill_s=round(min(answered_after), 3) if answered_after else None,
        replaced_and_serving_s=round(replaced_s, 2),
        gateways=service.status().get("gateways"),
    )
    return result


def stop_under_load(service: ServiceHandle, clients: int = 8) -> Result:
    """`sentiguard down` under `clients` closed-loop clients; counts what they saw from the
    moment `down` was called until `up` exited. Stops the service."""
    start = time.monotonic()
    graceful = float(service.settings.service.graceful_timeout_s)
    with Load(service.port, clients) as load:
        wait_for_traffic(service, 4 * clients)
        at = time.monotonic()
        down = service.cli("down", timeout=graceful + 30)
        down_s = time.monotonic() - at
        wait_until(lambda: service.proc.poll() is not None, graceful + 10, "`up` to exit", 0.1)
        load.stop()
    result = Result("stop_under_load", time.monotonic() - start, load.snapshot())
    after = [s for s in result.samples if s.start + s.latency_s >= at]
    counts = tally(after)
    result.extra.update(
        clients=clients,
        down_exit=down.returncode,
        down_s=round(down_s, 2),
        up_exit=service.proc.returncode,
        outcomes_after_down=counts,
        answered_after_down=sum(n for k, n in counts.items() if k.isdigit()),
        resets=counts.get("reset", 0),
        refused=counts.get("refused", 0),
        failed=sum(n for k, n in counts.items() if not k.isdigit() and k != "refused"),
        down_output=(down.stdout + down.stderr).strip()[-300:],
    )
    return result


def summary_line(result: Result) -> dict[str, Any]:
    """The figures docs/resilience.md quotes for these scenarios."""
    keys = (
        "refused",
        "failed",
        "resets",
        "open_connections_at_kill",
        "failed_started_after_kill",
        "first_answer_after_kill_s",
        "answered_after_down",
        "down_s",
    )
    return {k: result.extra[k] for k in keys if k in result.extra}

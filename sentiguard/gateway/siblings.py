"""The other gateway processes of this service, so /status and /metrics answer for all.

Every gateway process routes on its own: its own in-flight counts, its own fallback, its own
share of each worker's capacity. A client reaches whichever process accepted its connection,
so the one that answers /status (or /metrics) asks each sibling for its own view over the
sibling's control socket (`GET /control/local`, `<run_dir>/control_I.sock`) and merges:

- per worker `in_flight` (and `capacity` when the body has it): the sum over the processes;
- `fallback` `capacity`, `in_use`, `shed_total`: the sums;
- `gateways`: one entry per process, `reachable: false` with `pid: null` for one that did not
  answer within `timeout_s` (dead, restarting, or stopped);
- per worker `ready`: true only when every process that answered routes to it. Each process
  polls the workers on its own, so just after a worker starts (or heals) one may see it
  ready half a second before another; a client's request may reach either, so "ready" means
  ready for all of them, and `reason` names the process that does not route to it yet;
- the rest (breakers, drains, the watchdog's report) from the answering process: every
  process gets the same watchdog reports and polls the same workers.

A sibling is asked with a short timeout and never about a worker, so /status still answers
at once when a worker hangs; a stopped sibling costs at most `timeout_s` in all.

Capacity: `gateway.max_in_flight_per_worker` is the ceiling for the whole service; each
process gets `capacity_share` of it, so the processes together never send a worker more
(unless there are more processes than the ceiling: each gets at least one). Below its share
each process learns the worker's limit itself (`limiter.py`); a worker's `capacity` in
/status is the sum of the processes' current limits.
"""

from __future__ import annotations

import copy
import http.client
import time
from typing import Any

from sentiguard.runtime.control import ControlClient
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.supervisord import gateway_process_name
from sentiguard.settings import Settings

LOCAL_PATH = "/control/local"


def capacity_share(total: int, processes: int, index: int) -> int:
    """Process `index`'s share of a per-worker ceiling `total`: as even as can be, the
    remainder to the first processes, at least 1 (`capacity_share(8, 3, 0) == 3`)."""
    return max(1, total // processes + (1 if index < total % processes else 0))


class Siblings:
    """Asks the other gateway processes for their own views and merges them into ours."""

    def __init__(self, settings: Settings, index: int, timeout_s: float = 0.3) -> None:
        self.settings = settings
        self.index = index
        self.timeout_s = timeout_s
        run = RunDir(settings)
        self.others = [
            (i, run.control_socket_for(i)) for i in range(settings.gateway.processes) if i != index
        ]

    def views(self) -> list[dict[str, Any]]:
        """Each sibling's `/control/local` body, or a stub naming it when it did not answer.
        The whole round stays within about `timeout_s`."""
        end = time.monotonic() + self.timeout_s
        found = []
        for i, path in self.others:
            left = max(0.05, end - time.monotonic())
            try:
                client = ControlClient(self.settings, timeout=left)
                client.path = path
                status, body = client.request("GET", LOCAL_PATH)
            except (OSError, ValueError, http.client.HTTPException) as e:
                found.append(_stub(i, f"{type(e).__name__}: {e}"))
                continue
            if status == 200 and isinstance(body, dict):
                found.append(body)
            else:
                found.append(_stub(i, f"answered {status}"))
        return found

    def merge(self, status: dict[str, Any]) -> dict[str, Any]:
        """`status` (this process's own /status body) with the siblings' views added."""
        return merge(status, self.views())


def _stub(index: int, error: str) -> dict[str, Any]:
    return {
        "gateway": {
            "name": gateway_process_name(index),
            "index": index,
            "pid": None,
            "uptime_s": None,
            "restarts": None,
            "reachable": False,
            "error": error,
        }
    }


def merge(status: dict[str, Any], views: list[dict[str, Any]]) -> dict[str, Any]:
    """Add sibling views (`GatewayState.local_view` bodies, or stubs) into a /status body."""
    merged = copy.deepcopy(status)
    answered = [v for v in views if v.get("gateway", {}).get("reachable", True)]
    for worker in merged.get("workers", []):
        for view in answered:
            theirs = view.get("workers", {}).get(worker["name"], {})
            for key in ("in_flight", "capacity"):
                if isinstance(worker.get(key), int) and isinstance(theirs.get(key), int):
                    worker[key] += theirs[key]
            if worker.get("ready") and theirs.get("ready") is False:
                worker["ready"] = False
                worker["reason"] = f"not ready in {view['gateway']['name']} yet"
    fallback = merged.get("fallback", {})
    for view in answered:
        for key in ("capacity", "in_use", "shed_total"):
            value = view.get("fallback", {}).get(key)
            if isinstance(fallback.get(key), int | float) and isinstance(value, int | float):
                fallback[key] += value
    gateways = list(merged.get("gateways", [])) + [v["gateway"] for v in views if "gateway" in v]
    merged["gateways"] = sorted(gateways, key=lambda g: g.get("index", 0))
    return merged

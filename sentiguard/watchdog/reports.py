"""What the watchdog tells the gateway: one report per worker and a summary of itself.

The shapes are the control channel's contract (docs/internals.md): `PUT
/control/workers/<name>` takes `worker_report(...)`, `PUT /control/watchdog` takes
`summary(...)`. Built from what the watchdog already knows; no I/O here.
"""

from __future__ import annotations

import os
from typing import Any

from sentiguard.runtime.reload import ReloadLock
from sentiguard.watchdog.decisions import DecisionLog
from sentiguard.watchdog.limits import MemoryLimits
from sentiguard.watchdog.policy import Cause, Phase, Policy, WorkerRecord

Body = dict[str, Any]


def worker_report(
    rec: WorkerRecord, lock: ReloadLock | None = None, limits: MemoryLimits | None = None
) -> Body:
    """The PUT /control/workers/<name> body for one worker.

    A worker is drained while the watchdog recycles it, and the worker a reload is moving
    is drained as its `reload.lock` says: the reload, not us, owns that flag then.
    `limits` (from `Policy.memory_limits`) adds the worker's own memory limit and one
    line saying how it was derived.
    """
    sample = rec.memory
    drain = rec.phase is Phase.RECYCLING
    if lock is not None and lock.worker == rec.name:
        drain = lock.drain
    body: Body = {
        "drain": drain,
        "state": rec.phase.value,
        "reason": rec.reason,
        "pid": rec.pid or None,
        "rss_mb": sample.rss_mb if sample else None,
        "uss_mb": sample.uss_mb if sample else None,
        "restarts": {c.value: rec.restarts[c.value] for c in Cause},
        "parked": rec.phase is Phase.PARKED,
    }
    if limits is not None:
        body["memory_limit_mb"] = limits.limit_mb
        body["memory_critical_mb"] = limits.critical_mb
        body["memory_limit_source"] = limits.source
    return body


def summary(
    policy: Policy,
    interval_s: float,
    decisions: DecisionLog,
    records: list[WorkerRecord] | None = None,
) -> Body:
    """The PUT /control/watchdog body: our pid, our limits and the last decisions.

    With "auto" memory limits, `limits` holds the largest derived over `records`."""
    limits: dict[str, Any] = {**policy.limits(records), "interval_s": interval_s}
    return {"pid": os.getpid(), "limits": limits, "decisions": decisions.recent(10)}

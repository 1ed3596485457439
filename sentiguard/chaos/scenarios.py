"""Fault scenarios against a running service: the one copy tests and bench/chaos.py share.

Each scenario drives bounded, closed-loop traffic at 127.0.0.1 (`Load`), injects one fault,
watches the gateway's /status (`Monitor`) and returns a `Result` of counts and timings.
Tests assert on counts (zero failures, reasons present, workers back) and hold timings to
the service's own promises on the service's own clocks: an answer's latency_ms against
gateway.deadline_ms, supervisord's start time of a replacement against the watchdog's
configured probe rounds or the backoff it logged. The benchmark runs the same code longer
and prints the numbers. No scenario sleeps hoping something happened: it waits, to a
deadline, for the condition (e.g. the gateway's answered counter growing).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sentiguard.chaos.client import Response, answered_total, wait_until
from sentiguard.chaos.load import TEXTS, Load, Sample
from sentiguard.chaos.service import ServiceHandle
from sentiguard.chaos.timeline import FaultTiming, Monitor, Result
from sentiguard.runtime.endpoints import worker_name
from sentiguard.runtime.paths import RunDir

WorkerTest = Callable[[dict[str, Any]], bool]


def _ready_with_new_pid(pid: int) -> WorkerTest:
    return lambda w: bool(w.get("ready")) and w.get("pid") not in (None, pid)


def _not_ready(pid: int) -> WorkerTest:
    return lambda w: not w.get("ready") or w.get("pid") != pid or w.get("state") != "ready"


@contextlib.contextmanager
def _running(service: ServiceHandle, clients: int) -> Iterator[tuple[Load, Monitor]]:
    with Monitor(service) as monitor, Load(service.port, clients) as load:
        yield load, monitor


def wait_for_traffic(service: ServiceHandle, answers: int, timeout_s: float = 60.0) -> None:
    """Wait until the gateway has answered `answers` more requests (its own counter)."""
    before = answered_total(service.port)
    wait_until(
        lambda: answered_total(service.port) >= before + answers,
        timeout_s,
        f"the gateway to answer {answers} requests of the load",
        0.05,
    )


def watchdog_decisions(service: ServiceHandle) -> list[dict[str, Any]]:
    """Every decision the watchdog logged (watchdog.jsonl), oldest first."""
    decisions = []
    path = RunDir(service.settings).watchdog_log
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    decisions.append(doc)
    return decisions


def wall_ts(record: dict[str, Any]) -> float:
    """A log record's `ts` (ISO 8601, UTC) as wall-clock seconds."""
    return datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()


def hang_budget_s(service: ServiceHandle) -> float:
    """The watchdog's own promise for replacing a hung worker, from its settings.

    A worker stopped just after a good probe is probed `probe_failures` more rounds, each
    an interval plus at most the probe timeout; one more round carries out the kill and the
    start. supervisord's start time is truncated to a whole second, never late.
    """
    w = service.settings.watchdog
    return w.probe_failures * (w.interval_s + w.probe_timeout_ms / 1000) + 2 * w.interval_s


def kill(
    service: ServiceHandle,
    duration_s: float = 30.0,
    every_s: float = 5.0,
    clients: int = 16,
    seed: int = 4,
    recover_timeout_s: float = 300.0,
) -> Result:
    """SIGKILL a random running worker every `every_s` for `duration_s` under load."""
    rng = random.Random(seed)
    start = time.monotonic()
    kills: list[tuple[float, str, int]] = []
    last_kill_wall = 0.0  # supervisord reports start times in wall-clock seconds
    with _running(service, clients) as (load, monitor):
        next_kill = start
        while time.monotonic() - start < duration_s:
            time.sleep(max(0.0, next_kill - time.monotonic()))  # the kill schedule
            index = rng.randrange(service.workers)
            pid = service.supervisor_pid(index)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills.append((time.monotonic(), worker_name(index), pid))
                    last_kill_wall = time.time()
            next_kill += every_s
        # Keep the load on until every worker is back, so the recovery is measured too.
        wait_until(service.all_ready, recover_timeout_s, "every worker ready after the kills", 0.5)
        all_ready_at, all_ready_wall = time.monotonic(), time.time()
        load.stop()
    result = Result("kill", time.monotonic() - start, load.snapshot())
    if kills:
        _, name, pid = kills[-1]
        last = service.rpc().supervisor.getProcessInfo(f"primary:{name}")
        # The backoff the watchdog announced for the death that followed the last kill.
        announced = [
            float(d["backoff_s"])
            for d in watchdog_decisions(service)
            if d.get("worker") == name and "backoff_s" in d and wall_ts(d) >= last_kill_wall
        ]
        result.extra.update(
            ready_after_last_kill_s=round(all_ready_at - kills[-1][0], 1),
            # The watchdog's part (backoff) and the worker's part (import + model load);
            # supervisord's start time has a resolution of one second.
            restarted_after_last_kill_s=round(last["start"] - last_kill_wall, 1),
            last_kill_backoff_s=announced[0] if announced else None,
            last_load_s=round(all_ready_wall - last["start"], 1),
        )
    for at, name, pid in kills:
        result.faults.append(
            FaultTiming(
                name,
                pid,
                monitor.first(at, name, _not_ready(pid)),
                monitor.first(at, name, _ready_with_new_pid(pid)),
            )
        )
    result.extra["kills"] = len(kills)
    return result


def hang(
    service: ServiceHandle,
    index: int = 0,
    clients: int = 8,
    recover_timeout_s: float = 300.0,
) -> Result:
    """SIGSTOP worker `index` under load; wait until it is replaced and ready again."""
    pid = service.supervisor_pid(index)
    name = worker_name(index)
    start = time.monotonic()
    with _running(service, clients) as (load, monitor):
        wait_for_traffic(service, 2 * clients)  # traffic before the fault, on both workers
        at, at_wall = time.monotonic(), time.time()
        os.kill(pid, signal.SIGSTOP)
        try:
            replaced = wait_until(
                lambda: service.supervisor_pid(index) not in (0, pid) and time.monotonic(),
                recover_timeout_s,
                f"{name} (pid {pid}, stopped) to be replaced",
            )
            info = service.rpc().supervisor.getProcessInfo(f"primary:{name}")
            wait_until(service.all_ready, recover_timeout_s, f"{name} ready after the hang", 0.5)
        finally:
            # A failed run must not leave a stopped process behind the shared service.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        load.stop()
    result = Result("hang", time.monotonic() - start, load.snapshot())
    result.faults.append(
        FaultTiming(
            name,
            pid,
            monitor.first(at, name, _not_ready(pid)),
            monitor.first(at, name, _ready_with_new_pid(pid)),
            replaced - at,
        )
    )
    decided = [
        d
        for d in watchdog_decisions(service)
        if d.get("worker") == name and d.get("pid") == pid and d.get("reason") == "hang"
    ]
    result.extra.update(
        deadline_ms=service.settings.gateway.deadline_ms,
        # On the service's clocks: supervisord's start of the new process, the watchdog's
        # decision; both against the wall-clock moment of the SIGSTOP.
        replaced_by_supervisord_s=round(float(info["start"]) - at_wall, 2),
        hang_decided_s=round(wall_ts(decided[0]) - at_wall, 2) if decided else None,
        hang_budget_s=hang_budget_s(service),
    )
    return result


# A fixed watchdog.memory_limit_mb a leak run may still choose (bench/chaos.py
# --memory-limit-mb, tests' shared service): well above a serving embedded-model worker
# (measured ~360 MB USS, ~560 MB RSS). The scenario itself leaks relative to the limit
# /status reports, so it runs as well with the default "auto" on any model; over_mb stays
# below the auto critical level (1.5 x the limit: 280 MB above it on the embedded model).
LEAK_LIMIT_MB = 600
LEAK_STEP_MB = 32
LEAK_STEP_PAUSE_S = 0.05  # pacing of the leak's growth, not a wait for anything


def worker_memory_mb(service: ServiceHandle, index: int) -> float:
    """The worker's memory as the watchdog counts it (USS, else RSS), from /status."""
    worker = service.worker(index)
    return float(worker.get("uss_mb") or worker.get("rss_mb") or 0.0)


def worker_limit_mb(service: ServiceHandle, index: int) -> float | None:
    """The memory limit the watchdog holds this worker to, from /status: its own (with
    memory_limit_mb = "auto", derived from its measured peak, so the same leak scenario
    fits the embedded and a base-size model), else None until the watchdog reported it."""
    limit = service.worker(index).get("memory_limit_mb")
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        return None
    return float(limit)


def leak(
    service: ServiceHandle,
    index: int = 0,
    clients: int = 4,
    over_mb: int = 150,
    recover_timeout_s: float = 300.0,
) -> Result:
    """Make worker `index` leak `over_mb` past its own memory limit; wait for its recycle."""
    name = worker_name(index)
    pid = service.supervisor_pid(index)
    # /status carries memory and the worker's limit once the watchdog reported them.
    limit = wait_until(lambda: worker_limit_mb(service, index), 30.0, f"{name} memory limit")
    now_mb = wait_until(lambda: worker_memory_mb(service, index), 30.0, f"{name} memory")
    leak_mb = max(1, int(limit - now_mb + over_mb))
    start = time.monotonic()
    with _running(service, clients) as (load, monitor):
        wait_for_traffic(service, 2 * clients)
        at = time.monotonic()
        # Grow in steps, as a real leak does: one huge allocation holds the worker's GIL
        # long enough to time out the requests it is serving, which is another fault.
        left = leak_mb
        while left > 0:
            step = min(LEAK_STEP_MB, left)
            response = service.fault(index, {"kind": "leak", "mb": step})
            assert response.status == 200, f"leak fault: {response.status} {response.body}"
            left -= step
            time.sleep(LEAK_STEP_PAUSE_S)
        wait_until(
            lambda: service.supervisor_pid(index) not in (0, pid),
            recover_timeout_s,
            f"{name} (pid {pid}) recycled after leaking {leak_mb} MB",
        )
        # Ready in /status with its new pid, as the timeline saw it (what recover_s
        # measures), not only "ready": the gateway may still show the old process ready
        # until its poller sees the new one.
        wait_until(
            lambda: (
                monitor.first(at, name, _ready_with_new_pid(pid)) is not None
                and service.all_ready()
            ),
            recover_timeout_s,
            f"{name} ready with a new pid after the recycle",
            0.2,
        )
        load.stop()
    result = Result("leak", time.monotonic() - start, load.snapshot())
    result.faults.append(
        FaultTiming(
            name,
            pid,
            monitor.first(at, name, _not_ready(pid)),
            monitor.first(at, name, _ready_with_new_pid(pid)),
        )
    )
    result.extra.update(
        limit_mb=limit,
        before_mb=round(now_mb),
        leak_mb=leak_mb,
        # When fallback answers happened, relative to the first leak step (diagnostics).
        fallback_at_s=[round(s.start - at, 2) for s in result.samples if s.model == "fallback"],
    )
    return result


def steady(service: ServiceHandle, clients: int, duration_s: float) -> Result:
    """Plain load for a measured window, no fault: the baseline overload is compared with."""
    start = time.monotonic()
    with Load(service.port, clients) as load:
        time.sleep(duration_s)  # the measuring window itself
    return Result(f"steady{clients}", time.monotonic() - start, load.snapshot())


def overload(
    service: ServiceHandle, clients: int = 64, duration_s: float = 20.0, baseline_s: float = 6.0
) -> Result:
    """`clients` closed-loop clients for `duration_s`, after a baseline at 8 clients."""
    base = steady(service, 8, baseline_s)
    start = time.monotonic()
    with Load(service.port, clients) as load:
        time.sleep(duration_s)  # the measuring window itself
    result = Result("overload", time.monotonic() - start, load.snapshot())
    primary_rate = result.by_model.get("primary/None", 0) / result.duration_s
    base_rate = base.by_model.get("primary/None", 0) / base.duration_s
    result.extra.update(
        clients=clients,
        primary_per_s=round(primary_rate, 1),
        baseline_primary_per_s=round(base_rate, 1),
        primary_ratio=round(primary_rate / base_rate, 2) if base_rate else None,
    )
    return result


def broken_model(service: ServiceHandle, window_s: float = 60.0) -> Result:
    """A service whose primary model cannot load: fallback answers, /health says why.

    `service` was started (without waiting for readiness) on a corrupt model. Waits for
    the gateway's own /ready, then asks once: that first answer must already come from the
    fallback (`first_answer`), nothing waits for the primary. Then waits for /status to
    show every worker parked, and keeps asking for `window_s`, counting how often
    supervisord started a worker meanwhile (`spawns_in_window`; parked means none).
    """
    wait_until(
        lambda: service.get("/ready", 3.0).status == 200,
        300.0,
        "the gateway's /ready with a broken primary",
        0.25,
    )
    first = service.analyze(TEXTS[0], timeout=30.0)
    answered_s = time.monotonic() - service.started_at

    def all_parked() -> Response | None:
        workers = service.status()["workers"]
        if len(workers) == service.workers and all(w["state"] == "parked" for w in workers):
            return service.get("/health")
        return None

    # Workers first import torch (slow on busy cores), then fail to load and get parked.
    cause = wait_until(all_parked, 300.0, "/status to show every worker parked", 0.25)
    cause_s = time.monotonic() - service.started_at
    spawns_before = _spawns(service)
    watch_start = time.monotonic()
    samples: list[Sample] = []
    while time.monotonic() - watch_start < window_s:
        t = time.monotonic()
        r = service.analyze(TEXTS[1], timeout=5.0)
        body = r.body if isinstance(r.body, dict) else {}
        samples.append(Sample(t, r.elapsed_s, r.status, body.get("model"), body.get("reason")))
        time.sleep(0.5)  # the pace of the watch, not a wait for anything
    since_up_min = (time.monotonic() - service.started_at) / 60.0
    result = Result("broken_model", time.monotonic() - watch_start, samples)
    spawns = _spawns(service)
    restarts = spawns - service.workers  # the first start of each is not a restart
    first_body = first.body if isinstance(first.body, dict) else {}
    result.extra.update(
        first_answer_s=round(answered_s, 1),
        first_answer={"status": first.status, **first_body},
        cause_shown_s=round(cause_s, 1),
        health=service.get("/health").body,
        health_at_cause=cause.body,
        spawns_in_window=spawns - spawns_before,
        park_retry_s=service.settings.watchdog.park_retry_s,
        restarts=restarts,
        restarts_per_worker_per_min=round(restarts / service.workers / since_up_min, 2),
        workers=service.workers,
    )
    return result


def _spawns(service: ServiceHandle) -> int:
    """How many times supervisord has started a primary worker (from its log)."""
    path = RunDir(service.settings).log("supervisord")
    try:
        return path.read_text(errors="replace").count("spawned: 'primary_")
    except FileNotFoundError:
        return 0


def corrupt_copy(source: Path, target: Path) -> list[str]:
    """Copy a model directory and overwrite its weight files with garbage of the same size."""
    shutil.copytree(source, target)
    weights = [
        p for p in target.rglob("*") if p.suffix in (".bin", ".safetensors", ".pt", ".pth", ".onnx")
    ]
    if not weights:
        found = sorted(target.rglob("*"))
        raise FileNotFoundError(f"no weight file to corrupt in {source}: {found}")
    for p in weights:
        p.write_bytes(b"\x00not a model\xff" * (max(1, p.stat().st_size) // 13 + 1))
    return [p.name for p in weights]

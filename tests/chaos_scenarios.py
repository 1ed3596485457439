"""Fault scenarios against a running service: the one copy tests and bench/chaos.py share.

Each scenario drives bounded, closed-loop traffic at 127.0.0.1 (`Load`), injects one fault,
watches the gateway's /status (`Monitor`) and returns a `Result` of counts and timings. The
tests assert on the counts (zero failures, reasons present, workers back) and on deadlines
the contract names (replaced within 5 s, no request past its deadline + 100 ms); the
benchmark runs the same code longer and prints the numbers.

Timings: *detect* is fault -> the gateway stops counting the worker as ready (or, for a
hang, fault -> supervisord runs a new process for it); *recover* is fault -> the worker is
ready again with a new pid.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import Response, ServiceHandle, wait_until
from tests.load import TEXTS, Load, Sample


@dataclass
class Observation:
    at: float
    workers: dict[str, dict[str, Any]]


class Monitor:
    """Polls /status in the background, keeping a timeline of each worker's pid and ready."""

    def __init__(self, service: ServiceHandle, interval_s: float = 0.1) -> None:
        self.service = service
        self.interval_s = interval_s
        self.timeline: list[Observation] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                workers = {w["name"]: w for w in self.service.get("/status", 2.0).body["workers"]}
                self.timeline.append(Observation(at, workers))
            self._stop.wait(self.interval_s)

    def first(self, after: float, name: str, test: Any) -> float | None:
        """Seconds from `after` to the first observation where `test(worker)` holds."""
        for obs in list(self.timeline):
            worker = obs.workers.get(name)
            if obs.at >= after and worker is not None and test(worker):
                return obs.at - after
        return None


@dataclass
class FaultTiming:
    worker: str
    pid: int
    detect_s: float | None
    recover_s: float | None
    replaced_s: float | None = None  # hang: until supervisord ran a new process


@dataclass
class Result:
    """Counts and timings of one scenario run."""

    scenario: str
    duration_s: float
    samples: list[Sample] = field(repr=False, default_factory=list)
    faults: list[FaultTiming] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def statuses(self) -> Counter[int]:
        return Counter(s.status for s in self.samples)

    @property
    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    @property
    def by_model(self) -> Counter[str]:
        return Counter(f"{s.model}/{s.reason}" for s in self.samples if s.status == 200)

    def latency_quantile(self, q: float, answered_only: bool = True) -> float:
        values = sorted(s.latency_s for s in self.samples if s.status == 200 or not answered_only)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def server_quantile(self, q: float) -> float | None:
        """Quantile of the gateway's own latency_ms over the answered requests."""
        values = sorted(s.server_ms for s in self.samples if s.server_ms is not None)
        return values[min(len(values) - 1, int(q * len(values)))] if values else None

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "duration_s": round(self.duration_s, 1),
            "requests": len(self.samples),
            "statuses": dict(self.statuses),
            "answers": dict(self.by_model),
            "p50_ms": round(self.latency_quantile(0.50) * 1000, 1),
            "p99_ms": round(self.latency_quantile(0.99) * 1000, 1),
            "max_ms": round(max((s.latency_s for s in self.samples), default=0) * 1000, 1),
            "server_p99_ms": self.server_quantile(0.99),
            "faults": [vars(f) for f in self.faults],
            "load_avg_1m": round(os.getloadavg()[0], 1),
            **self.extra,
        }


def _ready_with_new_pid(pid: int) -> Any:
    return lambda w: w.get("ready") and w.get("pid") not in (None, pid)


def _not_ready(pid: int) -> Any:
    return lambda w: not w.get("ready") or w.get("pid") != pid or w.get("state") != "ready"


@contextlib.contextmanager
def _running(service: ServiceHandle, clients: int) -> Iterator[tuple[Load, Monitor]]:
    with Monitor(service) as monitor, Load(service.port, clients) as load:
        yield load, monitor


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
            time.sleep(max(0.0, next_kill - time.monotonic()))
            index = rng.randrange(service.workers)
            pid = service.supervisor_pid(index)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills.append((time.monotonic(), f"primary_{index}", pid))
                    last_kill_wall = time.time()
            next_kill += every_s
        # Keep the load on until every worker is back, so the recovery is measured too.
        wait_until(service.all_ready, recover_timeout_s, "every worker ready after the kills", 0.5)
        all_ready_at, all_ready_wall = time.monotonic(), time.time()
        load.stop()
    result = Result("kill", time.monotonic() - start, load.snapshot())
    if kills:
        last = service.rpc().supervisor.getProcessInfo(f"primary:{kills[-1][1]}")
        result.extra.update(
            ready_after_last_kill_s=round(all_ready_at - kills[-1][0], 1),
            # The watchdog's part (backoff) and the worker's part (import + model load);
            # supervisord's start time has a resolution of one second.
            restarted_after_last_kill_s=round(last["start"] - last_kill_wall, 1),
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
    settle_s: float = 2.0,
    recover_timeout_s: float = 300.0,
) -> Result:
    """SIGSTOP worker `index` under load; wait until it is replaced and ready again."""
    pid = service.supervisor_pid(index)
    name = f"primary_{index}"
    start = time.monotonic()
    with _running(service, clients) as (load, monitor):
        time.sleep(settle_s)  # some traffic before the fault, so both workers carry load
        at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            replaced = wait_until(
                lambda: service.supervisor_pid(index) not in (0, pid) and time.monotonic(),
                recover_timeout_s,
                f"{name} (pid {pid}, stopped) to be replaced",
            )
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
    result.extra["deadline_ms"] = service.settings.gateway.deadline_ms
    return result


# The watchdog.memory_limit_mb the leak scenario runs with: well above a serving
# embedded-model worker (measured ~360 MB USS, ~560 MB RSS) and far below
# memory_critical_mb, so the recycle is the ordinary drained one.
LEAK_LIMIT_MB = 600
LEAK_STEP_MB = 32


def worker_memory_mb(service: ServiceHandle, index: int) -> float:
    """The worker's memory as the watchdog counts it (USS, else RSS), from /status."""
    worker = service.worker(index)
    return float(worker.get("uss_mb") or worker.get("rss_mb") or 0.0)


def leak(
    service: ServiceHandle,
    index: int = 0,
    clients: int = 4,
    over_mb: int = 150,
    recover_timeout_s: float = 300.0,
) -> Result:
    """Make worker `index` leak past watchdog.memory_limit_mb; wait for its recycle."""
    name = f"primary_{index}"
    limit = service.settings.watchdog.memory_limit_mb
    pid = service.supervisor_pid(index)
    # /status carries memory once the watchdog reported it.
    now_mb = wait_until(lambda: worker_memory_mb(service, index), 30.0, f"{name} memory")
    leak_mb = max(1, int(limit - now_mb + over_mb))
    start = time.monotonic()
    with _running(service, clients) as (load, monitor):
        time.sleep(1.0)
        at = time.monotonic()
        # Grow in steps, as a real leak does: one huge allocation holds the worker's GIL
        # long enough to time out the requests it is serving, which is another fault.
        left = leak_mb
        while left > 0:
            step = min(LEAK_STEP_MB, left)
            response = service.fault(index, {"kind": "leak", "mb": step})
            assert response.status == 200, f"leak fault: {response.status} {response.body}"
            left -= step
            time.sleep(0.05)
        wait_until(
            lambda: service.supervisor_pid(index) not in (0, pid),
            recover_timeout_s,
            f"{name} (pid {pid}) recycled after leaking {leak_mb} MB",
        )
        wait_until(service.all_ready, recover_timeout_s, f"{name} ready after the recycle", 0.5)
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
    """Plain load, no fault: the baseline the overload run is compared with."""
    start = time.monotonic()
    with Load(service.port, clients) as load:
        time.sleep(duration_s)
    return Result(f"steady{clients}", time.monotonic() - start, load.snapshot())


def overload(
    service: ServiceHandle, clients: int = 64, duration_s: float = 20.0, baseline_s: float = 6.0
) -> Result:
    """`clients` closed-loop clients for `duration_s`, after a baseline at 8 clients."""
    base = steady(service, 8, baseline_s)
    start = time.monotonic()
    with Load(service.port, clients) as load:
        time.sleep(duration_s)
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

    `service` was started (without waiting for readiness) on a corrupt model. Measures the
    time from `up` to the first answer and to a /health that names the cause (a parked
    worker), then keeps asking for `window_s` and counts how often supervisord started a
    worker since `up`.
    """

    def answered() -> Response | None:
        r = service.analyze(TEXTS[0], timeout=5.0)
        return r if r.status == 200 else None

    def cause_shown() -> Response | None:
        r = service.get("/health")
        reasons = r.body.get("reasons", []) if isinstance(r.body, dict) else []
        return r if any("parked" in str(reason) for reason in reasons) else None

    first = wait_until(answered, 120.0, "an answer from the service with a broken primary", 0.25)
    answered_s = time.monotonic() - service.started_at
    # Workers first import torch (slow on busy cores), then fail to load and get parked.
    cause = wait_until(cause_shown, 300.0, "/health to name the parked workers", 0.25)
    cause_s = time.monotonic() - service.started_at
    watch_start = time.monotonic()
    samples: list[Sample] = []
    while time.monotonic() - watch_start < window_s:
        t = time.monotonic()
        r = service.analyze(TEXTS[1], timeout=5.0)
        body = r.body if isinstance(r.body, dict) else {}
        samples.append(Sample(t, r.elapsed_s, r.status, body.get("model"), body.get("reason")))
        time.sleep(0.5)
    since_up_min = (time.monotonic() - service.started_at) / 60.0
    result = Result("broken_model", time.monotonic() - watch_start, samples)
    restarts = _spawns(service) - service.workers  # the first start of each is not a restart
    result.extra.update(
        first_answer_s=round(answered_s, 1),
        first_answer=first.body,
        cause_shown_s=round(cause_s, 1),
        health=service.get("/health").body,
        health_at_cause=cause.body,
        restarts=restarts,
        restarts_per_worker_per_min=round(restarts / service.workers / since_up_min, 2),
        workers=service.workers,
    )
    return result


def _spawns(service: ServiceHandle) -> int:
    """How many times supervisord has started a primary worker (from its log)."""
    path = service.log_dir / "supervisord.log"
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
    assert weights, f"no weight file to corrupt in {source}: {sorted(target.rglob('*'))}"
    for p in weights:
        p.write_bytes(b"\x00not a model\xff" * (max(1, p.stat().st_size) // 13 + 1))
    return [p.name for p in weights]

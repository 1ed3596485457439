"""`sentiguard reload` under closed-loop load: who answered while the workers restarted.

The promise (README, docs/resilience.md): a reload moves the workers one at a time, and
the ready one serves meanwhile, so the fallback answers next to nothing and no request
fails. `reload_under_load` runs the real `sentiguard reload` (a separate process, as an
operator would) under `clients` closed-loop clients and counts answers by model/reason,
statuses and failures, and places every fallback answer against the reload's own steps:
each progress line it prints is stamped on arrival with `time.monotonic()`, the clock the
load's samples carry, so "3 primary_down answers 0.2 s after `[2/2] primary_1: drained`"
is read straight from the result (`extra["fallback_by_step"]`).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sentiguard.chaos.client import wait_until
from sentiguard.chaos.load import Load, Sample
from sentiguard.chaos.scenarios import wait_for_traffic, watchdog_decisions
from sentiguard.chaos.service import ServiceHandle
from sentiguard.chaos.timeline import Monitor, Result
from sentiguard.runtime.endpoints import worker_name

# Load kept on after the reload returned, so answers right after the last undrain count.
TAIL_S = 2.0
RELOAD_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Line:
    """One progress line of `sentiguard reload`, stamped when it arrived."""

    at: float  # time.monotonic()
    text: str


class ReloadProcess:
    """`sentiguard reload [--model M]` against `service`, its output read as it comes."""

    def __init__(self, service: ServiceHandle, model: str | None) -> None:
        args = [sys.executable, "-m", "sentiguard", "reload"]
        if model:
            args += ["--model", model]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            args,
            env=service.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[Line] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at its end: an open pipe is a ResourceWarning
            for text in self.proc.stdout:
                self.lines.append(Line(time.monotonic(), text.rstrip()))

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"`sentiguard reload` did not finish in {timeout_s:.0f} s; it said:\n"
                + self.output()
            ) from None
        self._reader.join(10)
        return code

    def output(self) -> str:
        return "\n".join(f"{line.at - self.started:7.2f}s {line.text}" for line in self.lines)


def step_of(at: float, lines: list[Line], started: float) -> str:
    """The last reload line printed before `at`: the step the service was in."""
    before = [line for line in lines if line.at <= at]
    if not before:
        return "before the reload" if at < started else "reload started"
    return before[-1].text[:60]


def fallback_by_step(samples: list[Sample], lines: list[Line], started: float) -> dict[str, Any]:
    """Fallback answers and failures grouped by the reload step they started in, with reasons."""
    groups: dict[str, Counter[str]] = {}
    for s in samples:
        if s.status == 200 and s.model != "fallback":
            continue
        what = f"fallback/{s.reason}" if s.status == 200 else f"status {s.status}"
        groups.setdefault(step_of(s.start, lines, started), Counter())[what] += 1
    return {step: dict(counts) for step, counts in groups.items()}


def reload_under_load(
    service: ServiceHandle,
    clients: int = 4,
    model: str | None = None,
    warmup_answers: int = 50,
    tail_s: float = TAIL_S,
    timeout_s: float = RELOAD_TIMEOUT_S,
) -> Result:
    """Run `sentiguard reload` under `clients` closed-loop clients until every worker serves
    again, then `tail_s` more; count who answered, and when.

    `extra` holds the reload's exit code and stamped output, the fallback share and its
    reasons, fallback answers by reload step, each worker's pid before and after, and the
    watchdog's `reload_step` decisions.
    """
    names = [worker_name(i) for i in range(service.workers)]
    pids_before = {name: service.supervisor_pid(i) for i, name in enumerate(names)}
    start = time.monotonic()
    with Monitor(service) as monitor, Load(service.port, clients) as load:
        wait_for_traffic(service, warmup_answers)
        job = ReloadProcess(service, model)
        code = job.wait(timeout_s)
        finished = time.monotonic()
        if code == 0:
            wait_until(service.all_ready, 60.0, "every worker ready after the reload", 0.2)
        time.sleep(tail_s)  # the tail window itself: load measured after the last undrain
        load.stop()
    result = Result("reload", time.monotonic() - start, load.snapshot())
    during = [s for s in result.samples if job.started <= s.start <= finished]
    fallback = [s for s in result.samples if s.status == 200 and s.model == "fallback"]
    answered = [s for s in result.samples if s.status == 200]
    steps = [d for d in watchdog_decisions(service) if d.get("event") == "reload_step"]
    seen = workers_seen(monitor, names, job.started)
    result.extra.update(
        clients=clients,
        reload_exit=code,
        reload_s=round(finished - job.started, 1),
        reload_output=job.output(),
        answered=len(answered),
        answered_during_reload=sum(1 for s in during if s.status == 200),
        failed=len(result.failures),
        fallback=len(fallback),
        fallback_share=round(len(fallback) / len(answered), 4) if answered else None,
        fallback_reasons=dict(Counter(str(s.reason) for s in fallback)),
        fallback_by_step=fallback_by_step(result.samples, job.lines, job.started),
        pids_before=pids_before,
        pids_after={name: service.supervisor_pid(i) for i, name in enumerate(names)},
        reload_steps=[
            {k: d.get(k) for k in ("worker", "pid", "outcome", "waited_s", "routed", "action")}
            for d in steps[-len(names) :]
        ],
        one_at_a_time=one_at_a_time(seen, pids_before),
    )
    return result


Seen = dict[str, list[list[Any]]]


def workers_seen(monitor: Monitor, names: list[str], since: float) -> Seen:
    """Each worker as the gateway's /status showed it, at each change: `[[t, pid, ready],
    ...]` with t in seconds from `since` (the pid stays the last one seen ready until a new
    process is ready)."""
    seen: Seen = {name: [] for name in names}
    for obs in list(monitor.timeline):
        for name in names:
            worker = obs.workers.get(name) or {}
            now = [worker.get("pid"), bool(worker.get("ready"))]
            if not seen[name] or seen[name][-1][1:] != now:
                seen[name].append([round(obs.at - since, 2), *now])
    return seen


def restart_window(changes: list[list[Any]], old_pid: int) -> tuple[float, float] | None:
    """From the first moment after the reload started (t >= 0) that the worker was not
    ready (or another pid) to the first moment a new process was ready; None when it never
    restarted. What came before t = 0 (a gateway process that had not polled it yet) is
    not the reload's doing."""
    start = next((t for t, pid, ready in changes if t >= 0 and (pid != old_pid or not ready)), None)
    if start is None:
        return None
    end = next(
        (t for t, pid, ready in changes if t >= start and ready and pid not in (None, old_pid)),
        None,
    )
    return None if end is None else (start, end)


def pids_between(changes: list[list[Any]], start: float, end: float) -> set[Any]:
    """Every pid the worker had at some moment in [start, end]. None (a gateway process
    that never saw any process there yet) is no pid."""
    before = [pid for t, pid, _ in changes if t <= start][-1:]
    pids = {*before, *(pid for t, pid, _ in changes if start < t <= end)}
    return pids - {None}


def one_at_a_time(seen: Seen, pids_before: dict[str, int]) -> dict[str, Any]:
    """For each worker, its restart window and whether every other worker kept one pid
    throughout it (so one of them served while it restarted)."""
    report: dict[str, Any] = {}
    for name, changes in seen.items():
        window = restart_window(changes, pids_before[name])
        others = {
            other: sorted(map(str, pids_between(seen[other], *window))) if window else []
            for other in seen
            if other != name
        }
        report[name] = {
            "window_s": window,
            "others_pids": others,
            "others_kept_pid": window is not None and all(len(p) == 1 for p in others.values()),
        }
    return report

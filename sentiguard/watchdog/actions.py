"""What the watchdog does to a worker: the loop decides, `WorkerActions` carries it out.

A recycle (drain, stop or kill, start, wait ready, undrain), a start after a backoff or a
park, and the adoption of a worker found starting each run in a thread that owns the
worker until it is ready again (or dead), while the loop keeps watching the others. A
start that does not reach `/ready` in `watchdog.start_timeout_s` is judged by its CPU
progress (`Policy.start_verdict`): still loading gets another window, stuck is killed and
counts as a crash. A death is handled at once, in the loop's thread: park a worker that
cannot load its model (exit code 4), back off any other. Every step is one decision line.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sentiguard.errors import ExitCode
from sentiguard.runtime.drain import GatewayLink
from sentiguard.runtime.recycle import Recycler, StartOutcome, load_failure
from sentiguard.runtime.supervisor_client import (
    ProcessInfo,
    ProcessState,
    SupervisorClient,
    SupervisorUnavailable,
)
from sentiguard.watchdog.decisions import DecisionLog
from sentiguard.watchdog.policy import Action, Cause, Decision, Phase, Policy, WorkerRecord
from sentiguard.watchdog.probe import ProbePool
from sentiguard.watchdog.reports import worker_report


def exit_reason(exitstatus: int) -> str:
    # supervisord reports -1 for a process ended by a signal (SIGKILL, OOM killer, ...).
    return "killed by a signal" if exitstatus == -1 else f"exited with status {exitstatus}"


class WorkerActions:
    """Carries out the loop's decisions; every collaborator is given, none is built here.

    `lock` guards the worker records (the loop holds it while it checks); `report_lock`
    orders the PUTs to the gateway, so an undrain is never overtaken by a report the loop
    built while the worker was still draining. `stop` is the process's stop flag: no new
    action starts once it is set, and the running ones stop waiting.
    """

    def __init__(
        self,
        policy: Policy,
        supervisor: SupervisorClient,
        recycler: Recycler,
        gateway: GatewayLink,
        decisions: DecisionLog,
        probes: ProbePool,
        *,
        lock: threading.RLock,
        report_lock: threading.Lock,
        stop: threading.Event,
        drain_timeout_s: float,
        kill: Callable[[int], list[int]],
        cpu: Callable[[int], float | None],
        clock: Callable[[], float],
    ) -> None:
        self.policy = policy
        self.supervisor = supervisor
        self.recycler = recycler
        self.gateway = gateway
        self.decisions = decisions
        self.probes = probes
        self.lock = lock
        self.report_lock = report_lock
        self.stop = stop
        self.drain_timeout_s = drain_timeout_s
        self.kill = kill
        self.cpu = cpu
        self.clock = clock
        self.threads: dict[str, threading.Thread] = {}

    # --- in the loop's thread ----------------------------------------------------------

    def recycle(self, rec: WorkerRecord, d: Decision) -> None:
        """Drain, stop (or kill, when hung), start, wait ready, undrain."""
        hung = d.action is Action.KILL
        # A worker too slow to pass its known-answer check counts with the hangs: it is
        # liveness, not memory, that failed (restarts keep their four causes).
        cause = Cause.HANG if hung or d.reason == "slow_check" else Cause.MEMORY
        self.decisions.decide(rec, "recycle", d.reason, d.action.value, **d.fields)
        rec.enter(Phase.RECYCLING, self.clock(), d.reason)
        rec.down_at = self.clock()
        rec.restarts[cause.value] += 1

        def steps(rec: WorkerRecord) -> None:
            old_pid = rec.pid
            # A hung worker will not finish anything in flight: do not wait for it.
            in_flight, waited = self.gateway.drain_and_wait(
                rec.name,
                lambda: worker_report(rec, None, self.policy.memory_limits(rec)),
                0.0 if hung else self.drain_timeout_s,
                self.stop,
            )
            self.decisions.decide(
                rec,
                "drained",
                d.reason,
                "stop" if not hung else "kill",
                in_flight=in_flight,
                waited_s=waited,
                gateway=in_flight is not None,
            )
            started = self.clock()
            killed = self.recycler.take_down(rec.name, old_pid, hung)
            stopped_s = round(self.clock() - started, 2)
            if hung:
                self.decisions.decide(
                    rec, "killed", "hang", "start", pid=old_pid, pids=killed, stopped_s=stopped_s
                )
            else:
                self.decisions.decide(
                    rec, "stopped", d.reason, "start", pid=old_pid, stopped_s=stopped_s
                )
            self._bring_up(rec, start=True)

        self._spawn(rec, "recycle", steps)

    def start(self, rec: WorkerRecord, reason: str | None, **fields: Any) -> None:
        """Start a worker that is down (after its backoff, a park, or found stopped)."""
        self.decisions.decide(rec, "start", reason, "start", **fields)
        self._spawn(rec, "start", lambda rec: self._bring_up(rec, start=True))

    def adopt(self, rec: WorkerRecord) -> None:
        """Wait for a worker someone else started (supervisord at `up`, an operator)."""
        self._spawn(rec, "adopt", lambda rec: self._bring_up(rec, start=False))

    def park_or_back_off(self, rec: WorkerRecord, info: ProcessInfo, now: float) -> None:
        """A worker died on its own: park it when it cannot load its model, else back off."""
        if info.state is ProcessState.BACKOFF:
            # supervisord retrying on its own would fight our backoff: stop that.
            with contextlib.suppress(SupervisorUnavailable):
                self.supervisor.stop(rec.name)
        cannot_load = info.exitstatus == ExitCode.MODEL_LOAD_ERROR
        cause = load_failure(self.supervisor.tail_log(rec.name)) if cannot_load else {}
        d = self.policy.on_death(rec, info.exitstatus, now, cause)
        died_pid = rec.pid
        rec.pid = 0
        rec.down_at = now
        if d.action is Action.PARK:
            fix = cause.get("fix") or "check the primary model (`sentiguard doctor`)"
            # The gateway shows this as "<name> is parked (cannot start): <reason>".
            rec.enter(Phase.PARKED, now, f"model {cause.get('cause', 'failed to load')}: {fix}")
            self.decisions.decide(
                rec,
                "park",
                "cannot_start",
                f"park; retry in {d.fields['retry_s']}s",
                pid=died_pid,
                **d.fields,
            )
        else:
            rec.enter(Phase.BACKOFF, now, exit_reason(info.exitstatus))
            self.decisions.decide(
                rec,
                "crash",
                rec.reason,
                f"start in {d.fields['backoff_s']}s",
                pid=died_pid,
                **d.fields,
            )

    def join(self, timeout_s: float) -> None:
        """Give each running action up to `timeout_s` to notice the stop flag and end."""
        for thread in list(self.threads.values()):
            thread.join(timeout=timeout_s)

    def _spawn(self, rec: WorkerRecord, what: str, target: Callable[[WorkerRecord], None]) -> None:
        """Run `target(rec)` in a thread that owns the worker until it returns."""
        if rec.busy or self.stop.is_set():
            return
        rec.busy = what
        self.probes.forget(rec.name)  # a probe of a worker being acted on says nothing

        def run() -> None:
            try:
                target(rec)
            except Exception as e:  # an action must never kill the watchdog
                self.decisions.decide(rec, "action_failed", f"{type(e).__name__}: {e}", what)
                with self.lock:
                    rec.enter(Phase.DOWN, self.clock(), f"{what} failed: {e}")
            finally:
                with self.lock:
                    rec.busy = None

        thread = threading.Thread(target=run, name=f"{what}-{rec.name}", daemon=True)
        self.threads[rec.name] = thread
        thread.start()

    # --- in an action's thread ---------------------------------------------------------

    def _bring_up(self, rec: WorkerRecord, start: bool) -> None:
        """Start (or just await) the worker until ready, dead, or stuck while loading."""
        window = self.policy.start_timeout_s
        if start:
            outcome = self.recycler.start_and_wait(rec.name, window)
        else:
            outcome = self.recycler.wait_ready(rec.name, window)
        waited = outcome.waited_s
        # A fresh process's CPU time so far is what it used in this window; an adopted one
        # (the watchdog restarted mid-load) is judged leniently on its first window.
        cpu_mark = 0.0
        cpu_used: float | None = None
        while outcome.why == "timeout" and not self.stop.is_set():
            cpu_now = self.cpu(outcome.pid) if outcome.pid else None
            cpu_used = None if cpu_now is None else round(cpu_now - cpu_mark, 1)
            if self.policy.start_verdict(cpu_used, waited) != "wait":
                break
            self.decisions.decide(
                rec,
                "start_slow",
                "still loading",
                f"wait {window:g}s more",
                pid=outcome.pid,
                cpu_s=cpu_used,
                waited_s=round(waited, 1),
            )
            cpu_mark = cpu_now or 0.0
            outcome = self.recycler.wait_ready(rec.name, window)
            waited += outcome.waited_s
        self._finish(rec, replace(outcome, waited_s=round(waited, 2)), cpu_used)

    def _finish(
        self, rec: WorkerRecord, outcome: StartOutcome, cpu_used: float | None = None
    ) -> None:
        now = self.clock()
        with self.lock:
            rec.pid = outcome.pid
            down_at = rec.down_at
            if outcome.ready:
                rec.enter(Phase.READY, now, None)
                rec.down_at = None
        if outcome.ready:
            with self.report_lock:  # after any report built while it was still draining
                body = worker_report(rec, None, self.policy.memory_limits(rec))
                self.gateway.put_worker(rec.name, body)  # undrain at once
            self.decisions.decide(
                rec,
                "ready",
                None,
                "route",
                pid=outcome.pid,
                model_version=outcome.model_version,
                waited_s=outcome.waited_s,
                # From detecting the outage (crash, hang, leak) to ready again.
                recovered_s=None if down_at is None else round(now - down_at, 2),
            )
        elif outcome.why == "timeout":
            # Alive, never ready, and no longer loading (or loading for far too long):
            # stuck. Killing it makes supervisord report EXITED, and the next round backs
            # off like for any other death.
            self.decisions.decide(
                rec,
                "start_timeout",
                "stuck while starting",
                "SIGKILL process tree",
                pid=outcome.pid,
                waited_s=outcome.waited_s,
                cpu_s=cpu_used,
                start_timeout_s=self.policy.start_timeout_s,
            )
            if outcome.pid:
                self.kill(outcome.pid)
            with self.lock:
                rec.enter(Phase.STARTING, now, "start timeout")
        elif outcome.why == "exited":
            self.decisions.decide(
                rec,
                "start_failed",
                exit_reason(outcome.exitstatus),
                "back off or park",
                pid=outcome.pid,
                exitstatus=outcome.exitstatus,
                waited_s=outcome.waited_s,
            )
            with self.lock:
                rec.enter(Phase.STARTING, now, "exited while starting")

"""What the watchdog does to a worker, each in a thread that owns the worker until done.

`WorkerActions` is the half of `Watchdog` (sentiguard/watchdog/main.py) that acts: a
recycle (drain, stop or kill, start, wait ready, undrain), a start after a backoff or a
park, and the adoption of a worker found starting. A start that does not reach `/ready`
in `watchdog.start_timeout_s` is judged by its CPU progress (`Policy.start_verdict`):
still loading gets another window, stuck is killed and counts as a crash. The loop
thread decides; these methods only carry a decision out and log what happened.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sentiguard.logs import EventLog, now_iso
from sentiguard.runtime import reload
from sentiguard.watchdog.drain import GatewayLink
from sentiguard.watchdog.policy import Action, Cause, Decision, Phase, Policy, WorkerRecord
from sentiguard.watchdog.recycle import Recycler, StartOutcome


def exit_reason(exitstatus: int) -> str:
    # supervisord reports -1 for a process ended by a signal (SIGKILL, OOM killer, ...).
    return "killed by a signal" if exitstatus == -1 else f"exited with status {exitstatus}"


class WorkerActions:
    """Mixed into `Watchdog`; the attributes below are set by its constructor."""

    policy: Policy
    log: EventLog
    gateway: GatewayLink
    recycler: Recycler
    kill: Callable[[int], list[int]]
    cpu: Callable[[int], float | None]
    clock: Callable[[], float]
    stop_event: threading.Event
    lock: threading.RLock
    report_lock: threading.Lock
    drain_timeout_s: float
    decisions: deque[dict[str, Any]]
    _decisions_lock: threading.Lock
    probes: dict[str, Any]
    actions: dict[str, threading.Thread]

    def _spawn(self, rec: WorkerRecord, what: str, target: Callable[[WorkerRecord], None]) -> None:
        """Run `target(rec)` in a thread that owns the worker until it returns."""
        if rec.busy or self.stop_event.is_set():
            return
        rec.busy = what
        self.probes.pop(rec.name, None)

        def run() -> None:
            try:
                target(rec)
            except Exception as e:  # an action must never kill the watchdog
                self._decide(rec, "action_failed", f"{type(e).__name__}: {e}", what)
                with self.lock:
                    rec.enter(Phase.DOWN, self.clock(), f"{what} failed: {e}")
            finally:
                with self.lock:
                    rec.busy = None

        thread = threading.Thread(target=run, name=f"{what}-{rec.name}", daemon=True)
        self.actions[rec.name] = thread
        thread.start()

    def _recycle(self, rec: WorkerRecord, d: Decision) -> None:
        hung = d.action is Action.KILL
        cause = Cause.HANG if hung else Cause.MEMORY
        self._decide(rec, "recycle", d.reason, d.action.value, **d.fields)
        rec.enter(Phase.RECYCLING, self.clock(), d.reason)
        rec.down_at = self.clock()
        rec.restarts[cause.value] += 1

        def steps(rec: WorkerRecord) -> None:
            old_pid = rec.pid
            # A hung worker will not finish anything in flight: do not wait for it.
            in_flight, waited = self.gateway.drain_and_wait(
                rec.name,
                lambda: self.report_body(rec),
                0.0 if hung else self.drain_timeout_s,
                self.stop_event,
            )
            self._decide(
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
                self._decide(
                    rec, "killed", "hang", "start", pid=old_pid, pids=killed, stopped_s=stopped_s
                )
            else:
                self._decide(rec, "stopped", d.reason, "start", pid=old_pid, stopped_s=stopped_s)
            self._bring_up(rec, start=True)

        self._spawn(rec, "recycle", steps)

    def _start(self, rec: WorkerRecord) -> None:
        self._bring_up(rec, start=True)

    def _adopt(self, rec: WorkerRecord) -> None:
        self._bring_up(rec, start=False)

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
        while outcome.why == "timeout" and not self.stop_event.is_set():
            cpu_now = self.cpu(outcome.pid) if outcome.pid else None
            cpu_used = None if cpu_now is None else round(cpu_now - cpu_mark, 1)
            if self.policy.start_verdict(cpu_used, waited) != "wait":
                break
            self._decide(
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
                rec.model_version = outcome.model_version
                rec.enter(Phase.READY, now, None)
                rec.down_at = None
        if outcome.ready:
            with self.report_lock:  # after any report built while it was still draining
                self.gateway.put_worker(rec.name, self.report_body(rec))  # undrain at once
            self._decide(
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
            self._decide(
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
            self._decide(
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

    def report_body(
        self, rec: WorkerRecord, lock: reload.ReloadLock | None = None
    ) -> dict[str, Any]:
        """The PUT /control/workers/<name> body (docs/internals.md) for one worker."""
        sample = rec.memory
        drain = rec.phase is Phase.RECYCLING
        if lock is not None and lock.worker == rec.name:
            drain = lock.drain
        return {
            "drain": drain,
            "state": rec.phase.value,
            "reason": rec.reason,
            "pid": rec.pid or None,
            "rss_mb": sample.rss_mb if sample else None,
            "uss_mb": sample.uss_mb if sample else None,
            "restarts": {c.value: rec.restarts[c.value] for c in Cause},
            "parked": rec.phase is Phase.PARKED,
        }

    def _decide(
        self, rec: WorkerRecord, event: str, reason: str | None, action: str, **fields: Any
    ) -> None:
        """Log one decision as a JSON line and keep it for the gateway's /status."""
        record: dict[str, Any] = {"worker": rec.name, "pid": rec.pid or None, "reason": reason}
        record.update(fields)
        record["action"] = action
        self.log(event, **record)
        with self._decisions_lock:
            self.decisions.append({"ts": now_iso(), "event": event, **record})

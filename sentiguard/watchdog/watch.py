"""One round of the watchdog's checks: gather the facts, ask the policy, hand over actions.

A round:

1. ask supervisord for every worker's state and pid (one XML-RPC call);
2. for each worker: sample its process tree's memory (full rounds only); collect the
   probes that finished since the last round and start the next ones (`probe.ProbePool`):
   GET /live every round (liveness and progress), the known-answer GET /health when
   `Policy.check_due`; feed the facts to `Policy`; hand any recycle or start to
   `WorkerActions`, whose thread owns the worker until it is ready again, while the loop
   keeps watching the others;
3. report every worker and a summary to the gateway's control socket, and keep the
   restart counts on disk (`counters`).

While `sentiguard reload` holds `<run_dir>/reload.lock`, nothing is recycled and the worker
being reloaded is left to the reload; workers that die are still restarted.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from sentiguard.runtime import memory
from sentiguard.runtime.drain import GatewayLink
from sentiguard.runtime.endpoints import worker_port
from sentiguard.runtime.reload import ReloadLock, read_reload_lock
from sentiguard.runtime.supervisor_client import (
    ProcessInfo,
    ProcessState,
    SupervisorClient,
    SupervisorUnavailable,
)
from sentiguard.settings import Settings
from sentiguard.watchdog import counters
from sentiguard.watchdog.actions import WorkerActions
from sentiguard.watchdog.decisions import DecisionLog
from sentiguard.watchdog.policy import Action, Cause, Decision, Phase, Policy, WorkerRecord
from sentiguard.watchdog.probe import Kind, ProbePool
from sentiguard.watchdog.reports import summary, worker_report


class Watch:
    """What the watchdog knows of each worker, and `round()`, one pass over all of them.

    `lock` guards `records` against the action threads; `report_lock` orders the reports
    (see `WorkerActions`). Every collaborator is given; `process.Watchdog` wires them.
    """

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        supervisor: SupervisorClient,
        gateway: GatewayLink,
        decisions: DecisionLog,
        actions: WorkerActions,
        probes: ProbePool,
        *,
        lock: threading.RLock,
        report_lock: threading.Lock,
        sample: Callable[[int], memory.MemorySample | None],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.supervisor = supervisor
        self.gateway = gateway
        self.decisions = decisions
        self.actions = actions
        self.probes = probes
        self.lock = lock
        self.report_lock = report_lock
        self.sample = sample
        self.clock = clock
        self.interval_s = settings.watchdog.interval_s
        self.records: dict[str, WorkerRecord] = {}
        self.rounds = 0  # rounds done: lets tests and chaos runs wait for "N rounds later"
        self._supervisor_ok: bool | None = None
        self._reload_seen: int | None = None
        self._supervisord_pid: int | None = None
        self._saved: counters.Counts = {}  # restart counts on disk, as last saved

    def round(self, full: bool = True) -> None:
        """One pass of checks over every worker, then the reports to the gateway.

        `full=False` (a probe round between two full ones) skips the memory samples, so
        `memory_samples` keeps meaning that many intervals.
        """
        infos = self._processes()
        lock = read_reload_lock(self.settings)
        self._note_reload(lock)
        if infos is not None:
            for name in sorted(infos):
                self._check(self._record(name), infos[name], lock, full)
        self._report(lock)
        self.rounds += 1

    def _processes(self) -> dict[str, ProcessInfo] | None:
        try:
            infos = self.supervisor.processes()
        except SupervisorUnavailable as e:
            if self._supervisor_ok is not False:
                self.decisions("supervisor_unreachable", reason=str(e), action="retry every round")
            self._supervisor_ok = False
            return None
        if self._supervisor_ok is False:
            self.decisions("supervisor_reachable", action="resume")
        self._supervisor_ok = True
        if self._supervisord_pid is None:
            with contextlib.suppress(SupervisorUnavailable):
                self._supervisord_pid = self.supervisor.supervisord_pid()
                self._saved = counters.load(self.settings, self._supervisord_pid)
        return infos

    def _record(self, name: str) -> WorkerRecord:
        with self.lock:
            rec = self.records.get(name)
            if rec is None:
                rec = WorkerRecord(
                    name=name,
                    port=worker_port(self.settings, name),
                    backoff=self.policy.new_backoff(),
                    since=self.clock(),
                )
                # Counts from before a restart of the watchdog itself, when there are any.
                rec.restarts.update(self._saved.get(name, {}))
                self.records[name] = rec
            return rec

    def _note_reload(self, lock: ReloadLock | None) -> None:
        pid = lock.pid if lock else None
        if pid != self._reload_seen:
            if lock:
                self.decisions(
                    "reload_hold",
                    reason="reload.lock",
                    reload_pid=lock.pid,
                    model=lock.model,
                    action="no recycles until the reload ends",
                )
            else:
                self.decisions("reload_released", action="resume recycles")
            self._reload_seen = pid

    def _check(
        self, rec: WorkerRecord, info: ProcessInfo, lock: ReloadLock | None, full: bool
    ) -> None:
        now = self.clock()
        sample = self.sample(info.pid) if info.pid and full else None
        with self.lock:
            if full:
                rec.memory = sample
            if rec.busy:
                return
            if lock is not None and lock.worker == rec.name:
                rec.pid = info.pid
                if rec.phase is not Phase.RELOADING:
                    rec.enter(Phase.RELOADING, now, "reload")
                return
            orphaned = rec.fresh
            if rec.phase is Phase.RELOADING:
                # The reload moved on: it left this worker ready on the new model (or, if
                # it died half-way, stopped: then nobody but us will start it again).
                rec.restarts[Cause.RELOAD.value] += 1
                rec.enter(Phase.STARTING, now, "reloaded")
                orphaned = True
            rec.fresh = False
            if info.state.alive:
                self._check_alive(rec, info, sample, lock, now)
            elif info.state.dead:
                self._check_dead(rec, info, now)
            elif info.state is ProcessState.STOPPED and orphaned:
                # Found stopped when we (re)start or when a reload lets go: a watchdog or
                # reload that died between its stop and its start left it so.
                rec.enter(Phase.STARTING, now, "found_stopped")
                rec.down_at = now
                self.actions.start(rec, "found_stopped")
            elif info.state is ProcessState.STOPPED and rec.phase is not Phase.STOPPED:
                rec.enter(Phase.STOPPED, now, "stopped outside the watchdog")
                self.decisions.decide(
                    rec, "worker_stopped", rec.reason, "leave alone until started"
                )
            elif info.state is ProcessState.UNKNOWN:
                rec.enter(Phase.DOWN, now, "supervisord state UNKNOWN")

    def _check_alive(
        self,
        rec: WorkerRecord,
        info: ProcessInfo,
        sample: memory.MemorySample | None,
        lock: ReloadLock | None,
        now: float,
    ) -> None:
        if rec.phase is not Phase.READY or info.pid != rec.pid:
            # Started by us, by supervisord at `up`, or by an operator: wait for /ready.
            rec.pid = info.pid
            if rec.phase is not Phase.STARTING:
                rec.enter(Phase.STARTING, now, "starting")
            self.actions.adopt(rec)
            return
        self.policy.on_ready_tick(rec, now)
        decisions: list[Decision | None] = []
        others = [o for o in self.records.values() if o is not rec]
        if sample is not None:
            decisions.append(self.policy.on_memory(rec, sample, others))
        live = self.probes.collect(rec.name, rec.pid, Kind.LIVE)
        if live is not None:
            decisions.append(self.policy.on_live(rec, live, now))
        checked = self.probes.collect(rec.name, rec.pid, Kind.CHECK)
        if checked is not None:
            decisions.append(self.policy.on_check(rec, checked, others, now))
        found = [d for d in decisions if d is not None]
        found.sort(key=lambda d: d.action is not Action.KILL)  # a hang serves nothing at all
        for d in found[:1]:
            if d.action is Action.HOLD:
                self._hold(rec, d)
            elif lock is not None and d.action is not Action.KILL:
                # A reload moves one worker at a time; a recycle now would make two.
                # A hung worker serves nothing, so killing it costs no capacity: not held.
                if not rec.held:
                    self.decisions.decide(
                        rec, "recycle_held", d.reason, "wait for the reload", **d.fields
                    )
                rec.held = True
            else:
                self.actions.recycle(rec, d)
                return
        self.probes.start(
            rec.name, rec.port, rec.pid, Kind.LIVE, self.policy.probe_timeout_ms / 1000
        )
        if self.policy.check_due(rec, now):
            timeout_s = self.policy.check_timeout_s(rec)
            self.probes.start(rec.name, rec.port, rec.pid, Kind.CHECK, timeout_s)

    def _hold(self, rec: WorkerRecord, d: Decision) -> None:
        """Log a hold once (memory or a slow check of the last ready worker), not each round."""
        slow = d.reason == "slow_check"
        if not (rec.check_held if slow else rec.held):
            event = "slow_check_hold" if slow else "memory_hold"
            self.decisions.decide(rec, event, d.reason, d.action.value, **d.fields)
        if slow:
            rec.check_held = True
        else:
            rec.held = True

    def _check_dead(self, rec: WorkerRecord, info: ProcessInfo, now: float) -> None:
        if rec.phase not in (Phase.BACKOFF, Phase.PARKED):
            self.actions.park_or_back_off(rec, info, now)
        elif rec.due is not None and now >= rec.due:
            retry = rec.phase is Phase.PARKED
            rec.enter(Phase.STARTING, now, "park_retry" if retry else "crash")
            rec.restarts[Cause.CRASH.value] += 1
            self.actions.start(rec, rec.reason, attempt=rec.backoff.attempts)

    def _report(self, lock: ReloadLock | None) -> None:
        # Under report_lock from building to sending, so an action thread's undrain cannot
        # be overtaken by a report built before it (which would drain the worker again).
        with self.report_lock:
            with self.lock:
                bodies = {
                    n: worker_report(rec, lock, self.policy.memory_limits(rec))
                    for n, rec in self.records.items()
                }
            counts = {name: body["restarts"] for name, body in bodies.items()}
            if counts != self._saved and self._supervisord_pid is not None:
                with contextlib.suppress(OSError):  # a nicety, never worth a crash
                    counters.save(self.settings, self._supervisord_pid, counts)
                    self._saved = counts
            for name, body in sorted(bodies.items()):
                if self.gateway.put_worker(name, body) is None:
                    return  # the gateway is away; one timeout per round is enough
            with self.lock:
                records = list(self.records.values())
            self.gateway.put_watchdog(
                summary(self.policy, self.interval_s, self.decisions, records)
            )

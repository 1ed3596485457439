"""The watchdog process: one loop that watches every primary worker and restarts it.

`Watchdog.run()` repeats, until `stop()`: wait half of `watchdog.interval_s` (less when a
probe times out), then one round, which samples memory only once an interval:

1. ask supervisord for every worker's state and pid (one XML-RPC call);
2. for each worker: sample its process tree's memory; collect the /health probe that
   finished since the last round and start the next one (probes run in a thread pool,
   one outstanding per worker, each with its own timeout, so a hung worker delays no
   other); feed the numbers to `Policy`; hand any recycle or restart to an action thread
   (`actions.WorkerActions`) that owns the worker until it is ready again, while the loop
   keeps watching the others;
3. report every worker and a summary to the gateway's control socket.

Every decision is one JSON line in `<log_dir>/watchdog.jsonl`. While `sentiguard reload`
holds `<run_dir>/reload.lock`, the watchdog recycles nothing and leaves the worker being
reloaded alone; it still restarts workers that die.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sentiguard.logs import EventLog
from sentiguard.runtime import memory, reload
from sentiguard.runtime.endpoints import worker_port
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings
from sentiguard.watchdog import counters
from sentiguard.watchdog.actions import WorkerActions, exit_reason
from sentiguard.watchdog.drain import GatewayLink
from sentiguard.watchdog.policy import (
    Action,
    Cause,
    Decision,
    Phase,
    Policy,
    WorkerRecord,
)
from sentiguard.watchdog.probe import ProbeResult, Readiness, probe_health, probe_ready
from sentiguard.watchdog.recycle import Recycler, load_failure
from sentiguard.watchdog.supervisor_client import (
    ProcessInfo,
    ProcessState,
    SupervisorClient,
    SupervisorUnavailable,
)

DECISIONS_KEPT = 20


def decision_log(settings: Settings) -> EventLog:
    return EventLog(path=RunDir(settings).watchdog_log)


class Watchdog(WorkerActions):
    """Watches the `primary` group of supervisord. `run()` blocks; `stop()` is thread-safe.

    The collaborators are parameters so tests can fake supervisord, HTTP and signals;
    the defaults are the real ones.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        supervisor: SupervisorClient | None = None,
        gateway: GatewayLink | None = None,
        log: EventLog | None = None,
        sample: Callable[[int], memory.MemorySample | None] = memory.sample,
        health: Callable[[int, float], ProbeResult] = probe_health,
        ready: Callable[[int, float], Readiness] = probe_ready,
        kill: Callable[[int], list[int]] = memory.kill_tree,
        cpu: Callable[[int], float | None] = memory.cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.policy = Policy(settings)
        self.interval_s = settings.watchdog.interval_s
        self.probe_timeout_s = float(settings.watchdog.probe_timeout_ms) / 1000
        self.drain_timeout_s = settings.watchdog.drain_timeout_s
        self.log = log or decision_log(settings)
        self.supervisor = supervisor or SupervisorClient(settings)
        self.gateway = gateway or GatewayLink(settings, self.log)
        self.sample = sample
        self.health = health
        self.kill = kill
        self.cpu = cpu
        self.clock = clock
        self.stop_event = threading.Event()
        self.wake = threading.Event()  # set by a timed-out probe: run a round now
        self.recycler = Recycler(
            settings, self.supervisor, self.stop_event, kill=kill, ready_probe=ready
        )
        self.records: dict[str, WorkerRecord] = {}
        self.lock = threading.RLock()
        self.report_lock = threading.Lock()  # orders the PUTs of the loop and the actions
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self._decisions_lock = threading.Lock()
        self.probes: dict[str, tuple[int, float, Future[ProbeResult]]] = {}
        # One outstanding probe per worker: a thread each, so no hung probe waits for another.
        workers = settings.primary.workers
        self.pool = ThreadPoolExecutor(max_workers=workers + 2, thread_name_prefix="probe")
        self.actions: dict[str, threading.Thread] = {}
        self._supervisor_ok: bool | None = None
        self._reload_seen: int | None = None
        self._supervisord_pid: int | None = None
        self._saved: counters.Counts = {}  # restart counts on disk, as last saved
        self.rounds = 0  # rounds done: lets tests and chaos runs wait for "N rounds later"

    # --- process lifecycle -------------------------------------------------------------

    def run(self) -> int:
        self.log("watchdog_started", pid=os.getpid(), action="watch", **self.policy.limits())
        try:
            last_full = time.monotonic()
            self._safe_round(full=True)
            while not self.stop_event.is_set():
                # Probe rounds come twice an interval, and a timed-out probe wakes us at
                # once, so a hang is seen about probe_failures x probe_timeout after it
                # starts, not that plus up to two intervals. Memory is sampled once an
                # interval (full rounds), so memory_samples keeps its meaning.
                self.wake.wait(self.interval_s / 2)
                self.wake.clear()
                full = time.monotonic() - last_full >= self.interval_s * 0.95
                if full:
                    last_full = time.monotonic()
                if not self.stop_event.is_set():
                    self._safe_round(full=full)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            for thread in list(self.actions.values()):
                thread.join(timeout=2.0)
            self.log("watchdog_stopped", pid=os.getpid(), action="exit")
        return 0

    def _safe_round(self, full: bool) -> None:
        # A bug or a surprise in one round (an odd XML-RPC fault, a psutil race) must not
        # end the watch: log it and try again next round. supervisord would restart us,
        # but with every record, backoff and counter lost.
        try:
            self.round(full=full)
        except Exception as e:
            self.log("round_failed", reason=f"{type(e).__name__}: {e}", action="retry next round")

    def stop(self) -> None:
        """Ask the loop to finish its round and exit; safe from a signal handler."""
        self.stop_event.set()
        self.wake.set()

    # --- one round ---------------------------------------------------------------------

    def round(self, full: bool = True) -> None:
        """One pass of checks over every worker, then the reports to the gateway.

        `full=False` (a probe round between two full ones) skips the memory samples, so
        `memory_samples` keeps meaning that many intervals.
        """
        infos = self._processes()
        lock = reload.read_lock(self.settings)
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
                self.log("supervisor_unreachable", reason=str(e), action="retry every round")
            self._supervisor_ok = False
            return None
        if self._supervisor_ok is False:
            self.log("supervisor_reachable", action="resume")
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

    def _note_reload(self, lock: reload.ReloadLock | None) -> None:
        pid = lock.pid if lock else None
        if pid != self._reload_seen:
            if lock:
                self.log(
                    "reload_hold",
                    reason="reload.lock",
                    reload_pid=lock.pid,
                    model=lock.model,
                    action="no recycles until the reload ends",
                )
            else:
                self.log("reload_released", action="resume recycles")
            self._reload_seen = pid

    def _check(
        self,
        rec: WorkerRecord,
        info: ProcessInfo,
        lock: reload.ReloadLock | None,
        full: bool = True,
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
                self._decide(rec, "start", "found_stopped", "start")
                self._spawn(rec, "start", self._start)
            elif info.state is ProcessState.STOPPED and rec.phase is not Phase.STOPPED:
                rec.enter(Phase.STOPPED, now, "stopped outside the watchdog")
                self._decide(rec, "worker_stopped", rec.reason, "leave alone until started")
            elif info.state is ProcessState.UNKNOWN:
                rec.enter(Phase.DOWN, now, "supervisord state UNKNOWN")

    def _check_alive(
        self,
        rec: WorkerRecord,
        info: ProcessInfo,
        sample: memory.MemorySample | None,
        lock: reload.ReloadLock | None,
        now: float,
    ) -> None:
        if rec.phase is not Phase.READY or info.pid != rec.pid:
            # Started by us, by supervisord at `up`, or by an operator: wait for /ready.
            rec.pid = info.pid
            if rec.phase is not Phase.STARTING:
                rec.enter(Phase.STARTING, now, "starting")
            self._spawn(rec, "adopt", self._adopt)
            return
        self.policy.on_ready_tick(rec, now)
        decisions: list[Decision] = []
        if sample is not None:
            others = [o for o in self.records.values() if o is not rec]
            d = self.policy.on_memory(rec, sample, others)
            if d:
                decisions.append(d)
        probed = self._collect_probe(rec)
        if probed is not None:
            d = self.policy.on_probe(rec, probed)
            if d:
                decisions.append(d)
        for d in decisions:
            if d.action is Action.KILL:  # a hang outranks memory: it serves nothing at all
                decisions = [d]
                break
        for d in decisions[:1]:
            if d.action is Action.HOLD:
                if not rec.held:
                    self._decide(rec, "memory_hold", d.reason, d.action.value, **d.fields)
                rec.held = True
            elif lock is not None and d.action is not Action.KILL:
                # A reload moves one worker at a time; a memory recycle now would make two.
                # A hung worker serves nothing, so killing it costs no capacity: not held.
                if not rec.held:
                    self._decide(rec, "recycle_held", d.reason, "wait for the reload", **d.fields)
                rec.held = True
            else:
                self._recycle(rec, d)
                return
        self._start_probe(rec)

    def _check_dead(self, rec: WorkerRecord, info: ProcessInfo, now: float) -> None:
        if rec.phase in (Phase.BACKOFF, Phase.PARKED):
            if rec.due is not None and now >= rec.due:
                retry = rec.phase is Phase.PARKED
                rec.enter(Phase.STARTING, now, "park_retry" if retry else "crash")
                rec.restarts[Cause.CRASH.value] += 1
                self._decide(rec, "start", rec.reason, "start", attempt=rec.backoff.attempts)
                self._spawn(rec, "start", self._start)
            return
        if info.state is ProcessState.BACKOFF:
            # supervisord retrying on its own would fight our backoff: stop that.
            with contextlib.suppress(SupervisorUnavailable):
                self.supervisor.stop(rec.name)
        cause = load_failure(self.supervisor.tail_log(rec.name)) if info.exitstatus == 4 else {}
        d = self.policy.on_death(rec, info.exitstatus, now, cause)
        died_pid = rec.pid
        rec.pid = 0
        rec.down_at = now
        if d.action is Action.PARK:
            fix = cause.get("fix") or "check the primary model (`sentiguard doctor`)"
            # The gateway shows this as "<name> is parked (cannot start): <reason>".
            rec.enter(Phase.PARKED, now, f"model {cause.get('cause', 'failed to load')}: {fix}")
            rec.parked_fix = fix
            self._decide(
                rec,
                "park",
                "cannot_start",
                f"park; retry in {d.fields['retry_s']}s",
                pid=died_pid,
                **d.fields,
            )
        else:
            rec.enter(Phase.BACKOFF, now, exit_reason(info.exitstatus))
            self._decide(
                rec,
                "crash",
                rec.reason,
                f"start in {d.fields['backoff_s']}s",
                pid=died_pid,
                **d.fields,
            )

    # --- probes ------------------------------------------------------------------------

    def _start_probe(self, rec: WorkerRecord) -> None:
        if rec.name in self.probes or self.stop_event.is_set():
            return
        future = self.pool.submit(self.health, rec.port, self.probe_timeout_s)
        self.probes[rec.name] = (rec.pid, self.clock(), future)
        future.add_done_callback(self._probe_done)

    def _probe_done(self, future: Future[ProbeResult]) -> None:
        # Only a timeout wakes the loop: it is the hang's signature, and it cannot repeat
        # faster than the probe timeout (a refused connection could spin the loop).
        if not future.cancelled() and future.exception() is None and future.result().timed_out:
            self.wake.set()

    def _collect_probe(self, rec: WorkerRecord) -> ProbeResult | None:
        pending = self.probes.get(rec.name)
        if pending is None:
            return None
        pid, submitted, future = pending
        if not future.done() and self.clock() - submitted >= self.probe_timeout_s:
            # Its timeout has passed, so it is about to end: a short wait here keeps one
            # miss per round instead of one per two rounds when interval ~ timeout.
            with contextlib.suppress(TimeoutError):
                future.result(timeout=0.1)
        if not future.done():
            return None
        del self.probes[rec.name]
        # A probe of an earlier process says nothing about this one.
        return future.result() if pid == rec.pid else None

    # --- reports -----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        limits: dict[str, Any] = {**self.policy.limits(), "interval_s": self.interval_s}
        with self._decisions_lock:
            recent = list(self.decisions)[-10:]
        return {"pid": os.getpid(), "limits": limits, "decisions": recent}

    def _report(self, lock: reload.ReloadLock | None) -> None:
        # Under report_lock from building to sending, so an action thread's undrain cannot
        # be overtaken by a report built before it (which would drain the worker again).
        with self.report_lock:
            with self.lock:
                bodies = {n: self.report_body(rec, lock) for n, rec in self.records.items()}
            counts = {name: body["restarts"] for name, body in bodies.items()}
            if counts != self._saved and self._supervisord_pid is not None:
                with contextlib.suppress(OSError):  # a nicety, never worth a crash
                    counters.save(self.settings, self._supervisord_pid, counts)
                    self._saved = counts
            for name, body in sorted(bodies.items()):
                if self.gateway.put_worker(name, body) is None:
                    return  # the gateway is away; one timeout per round is enough
            self.gateway.put_watchdog(self.summary())

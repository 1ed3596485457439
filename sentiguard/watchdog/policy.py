"""What the watchdog decides, separate from how it measures and acts (no I/O here).

Per worker the watchdog keeps a `WorkerRecord`; each round it feeds in what it measured
and `Policy` answers with at most one `Decision`:

- memory: `memory_samples` consecutive samples over the worker's limit -> recycle, unless
  this is the last ready worker and another is on its way back (held), except above the
  critical level. The limits are the configured numbers or, with "auto", derived from
  the worker's own measure at start (`limits.derive`);
- hang, judged by progress, not latency (`on_live`, from GET /live every round):
  `probe_failures` /live probes in a row without an answer (the HTTP thread is stopped
  or wedged) -> kill, `probe_error` "no_answer"; a worker with work whose oldest running
  batch (or, with work queued and none running, the time since a batch last finished)
  is older than `hang_window_ms` -> kill, "no_progress". A busy worker that finishes
  batches is never hung, however slow they are;
- correctness (`on_check`, the known-answer GET /health every `check_interval_s`): a
  wrong answer is a miss, `probe_failures` in a row -> kill ("wrong_answer"); a check
  slower than `check_budget_ms` (derived from the worker's batch time: it may wait behind
  one running batch per lane) is "slow", `probe_failures` in a row -> a graceful
  recycle, never of the last ready worker (held);
- death: exit code 4 (`ExitCode.MODEL_LOAD_ERROR`) -> parked, retried every
  `park_retry_s`; any other death -> restart after an exponential backoff
  (`backoff_initial_s` doubling up to `backoff_max_s`), reset once the worker has stayed
  ready for `backoff_max_s`;
- a start not ready within `start_timeout_s` is judged by its progress: a worker that
  used at least `START_PROGRESS_CPU_S` of CPU in that window is loading on a busy machine
  and gets another window (killing it would only start the same slow load again, which is
  how a loaded host turns restarts into a crash loop); one that did not is stuck, and is
  killed as a crash. No start waits longer than `START_CAP_FACTOR` windows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sentiguard.errors import ExitCode
from sentiguard.runtime.memory import MemorySample
from sentiguard.runtime.recycle import START_CAP_FACTOR
from sentiguard.settings import Settings
from sentiguard.watchdog.limits import AUTO, MemoryLimits, derive
from sentiguard.watchdog.probe import LiveResult, ProbeResult

# A loading worker burns CPU (imports, weights); a stuck one does not. One CPU-second per
# start window tells them apart even on a host with several loads per core.
START_PROGRESS_CPU_S = 1.0
# The known-answer check rides the urgent lane, so it waits for at most one running batch
# per lane and then runs its own two short texts: 3 of the worker's longest recent batches
# cover that with room for a host where both workers share the cores.
CHECK_BUDGET_BATCHES = 3.0
# A check's HTTP timeout is this many budgets: one past its budget is "slow", not lost.
CHECK_TIMEOUT_BUDGETS = 2.0


class Phase(StrEnum):
    """A worker's state as the watchdog (and the gateway's /status) names it."""

    STARTING = "starting"  # spawned or adopted, /ready not passed yet
    READY = "ready"
    RECYCLING = "recycling"  # drained and being restarted by the watchdog
    BACKOFF = "backoff"  # dead, waiting for its restart
    PARKED = "parked"  # cannot start (bad model); retried rarely
    STOPPED = "stopped"  # stopped on purpose (operator, shutdown): left alone
    RELOADING = "reloading"  # `sentiguard reload` owns it
    DOWN = "down"  # supervisord does not know it or cannot be reached


class Cause(StrEnum):
    """Why a worker was restarted; the keys of `restarts` in reports."""

    MEMORY = "memory"
    HANG = "hang"
    CRASH = "crash"
    RELOAD = "reload"


class Action(StrEnum):
    RECYCLE = "drain+restart"  # graceful: drain, stop, start, wait ready, undrain
    KILL = "drain+kill+start"  # hung: drain, SIGKILL the tree, start, wait ready, undrain
    START = "start"  # dead: start it, wait ready, undrain
    PARK = "park"
    HOLD = "hold"  # would recycle, but it is the last ready worker


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)


class Backoff:
    """Exponential restart delay: initial, 2x initial, ... capped; reset after stability."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempts = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * (2**self.attempts))
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class WorkerRecord:
    """Everything the watchdog knows about one worker. Mutated only under the watchdog lock."""

    name: str
    port: int
    backoff: Backoff
    phase: Phase = Phase.STARTING
    pid: int = 0
    memory: MemorySample | None = None
    over_limit: int = 0  # consecutive memory samples over the limit
    misses: int = 0  # consecutive /live probes without an answer
    wrong: int = 0  # consecutive known-answer checks answered wrong (or failed)
    slow: int = 0  # consecutive known-answer checks over their budget
    live: LiveResult | None = None  # the last /live answer with counters, of this pid
    mark: tuple[int, float] | None = None  # (batches, when): last progress seen, with work
    check_due: float | None = None  # when the next known-answer check is due
    restarts: Counter[str] = field(default_factory=Counter)
    reason: str | None = None  # why it is not ready, or what was last done to it
    since: float = 0.0  # monotonic time the current phase began
    due: float | None = None  # BACKOFF/PARKED: when to try starting it again
    busy: str | None = None  # an action thread owns the worker
    held: bool = False  # a memory or reload hold was logged (log it once, not every round)
    check_held: bool = False  # a slow-check hold was logged
    down_at: float | None = None  # when the current outage was detected (for recovered_s)
    fresh: bool = True  # not yet seen by a full round

    def enter(self, phase: Phase, now: float, reason: str | None = None) -> None:
        self.phase = phase
        self.since = now
        self.reason = reason
        if phase is not Phase.READY:
            self.misses = self.wrong = self.slow = 0
            self.over_limit = 0
            self.held = self.check_held = False
            self.live = self.mark = self.check_due = None

    @property
    def batch_ms_max(self) -> float | None:
        """The longest recent batch this worker reported, when it measured one."""
        progress = self.live.progress if self.live else None
        return progress.batch_ms_max if progress else None


def ready_ones(records: list[WorkerRecord]) -> list[WorkerRecord]:
    """The workers serving now: ready and not owned by an action (the memory and the
    slow-check rules never take the last of these)."""
    return [r for r in records if r.phase is Phase.READY and r.busy is None]


class Policy:
    """The thresholds of `[watchdog]`, applied to one record at a time."""

    def __init__(self, settings: Settings) -> None:
        w = settings.watchdog
        self.memory_limit = w.memory_limit_mb  # a number, or "auto"
        self.memory_critical = w.memory_critical_mb
        self.memory_samples = int(w.memory_samples)
        self.probe_timeout_ms = float(w.probe_timeout_ms)
        self.probe_budget_ms = float(w.probe_budget_ms)
        self.probe_failures = int(w.probe_failures)
        self.check_interval_s = float(w.check_interval_s)
        self.progress_floor_s = float(w.progress_floor_s)
        self.progress_factor = float(w.progress_factor)
        self.start_timeout_s = float(w.start_timeout_s)
        self.backoff_initial_s = float(w.backoff_initial_s)
        self.backoff_max_s = float(w.backoff_max_s)
        self.park_retry_s = float(w.park_retry_s)

    def new_backoff(self) -> Backoff:
        return Backoff(self.backoff_initial_s, self.backoff_max_s)

    def limits(self, records: list[WorkerRecord] | None = None) -> dict[str, Any]:
        """The thresholds for reports. With "auto", the memory figures are the largest of
        the workers' derived ones (None before any worker measured itself)."""
        derived = [self.memory_limits(r) for r in records or []]
        limits = [d.limit_mb for d in derived if d.limit_mb is not None]
        auto = self.memory_limit == AUTO
        return {
            "memory_limit_mb": max(limits, default=None) if auto else self.memory_limit,
            "memory_limit_source": "auto" if auto else "watchdog.memory_limit_mb",
            "memory_critical_mb": (
                max((d.critical_mb for d in derived if d.limit_mb is not None), default=None)
                if self.memory_critical == AUTO
                else self.memory_critical
            ),
            "memory_samples": self.memory_samples,
            "probe_timeout_ms": self.probe_timeout_ms,
            "probe_budget_ms": self.probe_budget_ms,
            "probe_failures": self.probe_failures,
            "check_interval_s": self.check_interval_s,
            "progress_floor_s": self.progress_floor_s,
            "progress_factor": self.progress_factor,
            "start_timeout_s": self.start_timeout_s,
            "backoff_initial_s": self.backoff_initial_s,
            "backoff_max_s": self.backoff_max_s,
            "park_retry_s": self.park_retry_s,
        }

    # --- memory ------------------------------------------------------------------------

    def memory_limits(self, rec: WorkerRecord) -> MemoryLimits:
        """This worker's limits: configured, or derived from what it measured at start."""
        profile = rec.live.memory if rec.live is not None else None
        return derive(self.memory_limit, self.memory_critical, profile)

    def on_memory(
        self, rec: WorkerRecord, sample: MemorySample, others: list[WorkerRecord]
    ) -> Decision | None:
        """Count a sample of a READY worker; recycle after K in a row over the limit."""
        used = sample.used_mb
        limits = self.memory_limits(rec)
        # Without a limit yet (auto, not measured), only the critical level counts.
        limit = limits.limit_mb if limits.limit_mb is not None else limits.critical_mb
        if used <= limit:
            rec.over_limit = 0
            rec.held = False
            return None
        rec.over_limit += 1
        if rec.over_limit < self.memory_samples:
            return None
        numbers = {
            "rss_mb": sample.rss_mb,
            "uss_mb": sample.uss_mb,
            "limit_mb": limit,
            "samples": rec.over_limit,
        }
        if used > limits.critical_mb:
            return Decision(
                Action.RECYCLE,
                "memory_critical",
                {**numbers, "critical_mb": limits.critical_mb, "limit_source": limits.source},
            )
        others_ready = ready_ones(others)
        coming_back = [
            o.name
            for o in others
            if o.phase in (Phase.RECYCLING, Phase.STARTING, Phase.BACKOFF, Phase.RELOADING)
        ]
        if not others_ready and coming_back:
            return Decision(Action.HOLD, "memory", {**numbers, "waiting_for": coming_back})
        return Decision(Action.RECYCLE, "memory", numbers)

    # --- liveness: GET /live -----------------------------------------------------------

    def hang_window_ms(self, rec: WorkerRecord) -> float:
        """How long a worker with work may finish no batch: scaled to its batch time."""
        longest = rec.batch_ms_max or 0.0
        return max(self.progress_floor_s * 1000, self.progress_factor * longest)

    def on_live(self, rec: WorkerRecord, result: LiveResult, now: float) -> Decision | None:
        """Judge one /live probe of a READY worker: no answer K times, or no progress."""
        if not result.ok:
            rec.misses += 1
            if rec.misses < self.probe_failures:
                return None
            return self._hang(rec, "no_answer", rtt_ms=result.rtt_ms, error=result.error)
        rec.misses = 0
        if result.progress is not None or result.memory is not None:
            rec.live = result
        progress = result.progress
        if progress is None:
            return None  # a worker without counters: only the no-answer rule applies
        if not progress.has_work:
            rec.mark = None
            return None
        if rec.mark is None or rec.mark[0] != progress.batches:
            rec.mark = (progress.batches, now)  # a batch finished since: progress
        seen_ms = (now - rec.mark[1]) * 1000
        if progress.running and progress.oldest_running_ms is not None:
            stalled_ms = progress.oldest_running_ms  # the worker's own clock on its batch
        else:
            # Queued, none running: since the last batch, but only as long as we have seen
            # the work wait (an idle worker's last batch may be an hour old).
            ago = progress.last_batch_ago_ms
            stalled_ms = seen_ms if ago is None else min(ago, seen_ms)
        window_ms = self.hang_window_ms(rec)
        if stalled_ms <= window_ms:
            return None
        return self._hang(
            rec,
            "no_progress",
            stalled_ms=round(stalled_ms),
            window_ms=round(window_ms),
            batch_ms_max=progress.batch_ms_max,
            queued=progress.queued,
            running=progress.running,
            batches=progress.batches,
        )

    def _hang(self, rec: WorkerRecord, why: str, **numbers: Any) -> Decision:
        fields = {**numbers, "misses": rec.misses, "probe_error": why}
        return Decision(Action.KILL, "hang", {k: v for k, v in fields.items() if v is not None})

    # --- correctness: the known-answer check, GET /health ------------------------------

    def check_budget_ms(self, rec: WorkerRecord) -> float:
        """How long a check may take: it may wait behind one running batch per lane."""
        longest = rec.batch_ms_max or 0.0
        return max(self.probe_budget_ms, CHECK_BUDGET_BATCHES * longest)

    def check_timeout_s(self, rec: WorkerRecord) -> float:
        budget = self.check_budget_ms(rec) * CHECK_TIMEOUT_BUDGETS
        return max(self.probe_timeout_ms, budget) / 1000

    def check_due(self, rec: WorkerRecord, now: float) -> bool:
        """Whether a known-answer check of this READY worker is due (/ready just ran one)."""
        if rec.check_due is None:
            rec.check_due = now + self.check_interval_s
        return now >= rec.check_due

    def on_check(
        self, rec: WorkerRecord, result: ProbeResult, others: list[WorkerRecord], now: float
    ) -> Decision | None:
        """Judge one known-answer check: wrong answers kill, slow ones recycle (not the last)."""
        rec.check_due = now + self.check_interval_s
        if result.error in ("refused", "draining", "loading"):
            return None  # not the model's answer: /live and the recycle own these cases
        budget_ms = self.check_budget_ms(rec)
        numbers = {"probe_ms": result.probe_ms, "rtt_ms": result.rtt_ms, "budget_ms": budget_ms}
        if not result.ok and not result.timed_out:
            rec.wrong += 1
            rec.check_due = now  # wrong: check again at once, do not serve it for long
            if rec.wrong < self.probe_failures:
                return None
            error = "wrong_answer" if result.error == "wrong_answer" else "check_failed"
            return self._hang(rec, error, **numbers, wrong=rec.wrong, error=result.error)
        rec.wrong = 0
        # The round trip, not the worker's own probe_ms: the wait behind a batch is what
        # the budget allows for, and a timed-out check reports no probe_ms at all.
        took_ms = result.rtt_ms if result.rtt_ms is not None else result.probe_ms
        if result.ok and took_ms <= budget_ms:
            rec.slow = 0
            rec.check_held = False
            return None
        rec.slow += 1
        if rec.slow < self.probe_failures:
            return None
        fields = {**numbers, "slow": rec.slow, "probe_error": result.error or "over_budget"}
        if not ready_ones(others):
            return Decision(Action.HOLD, "slow_check", {**fields, "why": "last ready worker"})
        return Decision(Action.RECYCLE, "slow_check", fields)

    # --- death and start ---------------------------------------------------------------

    def on_death(
        self, rec: WorkerRecord, exitstatus: int, now: float, cause: dict[str, Any] | None = None
    ) -> Decision:
        """A worker died on its own (or never became ready): park it or back off."""
        if exitstatus == ExitCode.MODEL_LOAD_ERROR:
            rec.due = now + self.park_retry_s
            fields: dict[str, Any] = {"exitstatus": exitstatus, "retry_s": self.park_retry_s}
            fields.update(cause or {})
            return Decision(Action.PARK, "cannot_start", fields)
        delay = rec.backoff.next_delay()
        rec.due = now + delay
        return Decision(
            Action.START,
            "crash",
            {"exitstatus": exitstatus, "backoff_s": delay, "attempt": rec.backoff.attempts},
        )

    def on_ready_tick(self, rec: WorkerRecord, now: float) -> None:
        """A worker that stayed ready as long as the longest backoff has recovered."""
        if rec.backoff.attempts and now - rec.since >= self.backoff_max_s:
            rec.backoff.reset()

    def start_verdict(self, cpu_used_s: float | None, waited_s: float) -> str:
        """After a start window without /ready: "wait" (still loading) or "kill" (stuck)."""
        if cpu_used_s is None:
            return "kill"
        if waited_s + self.start_timeout_s > self.start_timeout_s * START_CAP_FACTOR:
            return "kill"
        return "wait" if cpu_used_s >= START_PROGRESS_CPU_S else "kill"

"""What the watchdog decides, separate from how it measures and acts (no I/O here).

Per worker the watchdog keeps a `WorkerRecord`; each round it feeds in what it measured
and `Policy` answers with at most one `Decision`:

- memory: `memory_samples` consecutive samples over `memory_limit_mb` -> recycle, unless
  this is the last ready worker and another is on its way back (held), except above
  `memory_critical_mb`;
- hang: `probe_failures` /health probes in a row that time out, fail, or exceed
  `probe_budget_ms` -> kill outright and restart;
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
from sentiguard.settings import Settings
from sentiguard.watchdog.probe import ProbeResult

# A loading worker burns CPU (imports, weights); a stuck one does not. One CPU-second per
# start window tells them apart even on a host with several loads per core.
START_PROGRESS_CPU_S = 1.0
START_CAP_FACTOR = 8


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
    misses: int = 0  # consecutive failed probes
    restarts: Counter[str] = field(default_factory=Counter)
    reason: str | None = None  # why it is not ready, or what was last done to it
    since: float = 0.0  # monotonic time the current phase began
    due: float | None = None  # BACKOFF/PARKED: when to try starting it again
    busy: str | None = None  # an action thread owns the worker
    held: bool = False  # a memory hold was logged (log it once, not every round)
    down_at: float | None = None  # when the current outage was detected (for recovered_s)
    fresh: bool = True  # not yet seen by a full round

    def enter(self, phase: Phase, now: float, reason: str | None = None) -> None:
        self.phase = phase
        self.since = now
        self.reason = reason
        if phase is not Phase.READY:
            self.misses = 0
            self.over_limit = 0
            self.held = False


class Policy:
    """The thresholds of `[watchdog]`, applied to one record at a time."""

    def __init__(self, settings: Settings) -> None:
        w = settings.watchdog
        self.memory_limit_mb = float(w.memory_limit_mb)
        self.memory_critical_mb = float(w.memory_critical_mb)
        self.memory_samples = int(w.memory_samples)
        self.probe_budget_ms = float(w.probe_budget_ms)
        self.probe_failures = int(w.probe_failures)
        self.start_timeout_s = float(w.start_timeout_s)
        self.backoff_initial_s = float(w.backoff_initial_s)
        self.backoff_max_s = float(w.backoff_max_s)
        self.park_retry_s = float(w.park_retry_s)

    def new_backoff(self) -> Backoff:
        return Backoff(self.backoff_initial_s, self.backoff_max_s)

    def limits(self) -> dict[str, float]:
        return {
            "memory_limit_mb": self.memory_limit_mb,
            "memory_critical_mb": self.memory_critical_mb,
            "memory_samples": self.memory_samples,
            "probe_budget_ms": self.probe_budget_ms,
            "probe_failures": self.probe_failures,
            "start_timeout_s": self.start_timeout_s,
            "backoff_initial_s": self.backoff_initial_s,
            "backoff_max_s": self.backoff_max_s,
            "park_retry_s": self.park_retry_s,
        }

    def on_memory(
        self, rec: WorkerRecord, sample: MemorySample, others: list[WorkerRecord]
    ) -> Decision | None:
        """Count a sample of a READY worker; recycle after K in a row over the limit."""
        used = sample.used_mb
        if used <= self.memory_limit_mb:
            rec.over_limit = 0
            rec.held = False
            return None
        rec.over_limit += 1
        if rec.over_limit < self.memory_samples:
            return None
        numbers = {
            "rss_mb": sample.rss_mb,
            "uss_mb": sample.uss_mb,
            "limit_mb": self.memory_limit_mb,
            "samples": rec.over_limit,
        }
        if used > self.memory_critical_mb:
            return Decision(
                Action.RECYCLE,
                "memory_critical",
                {**numbers, "critical_mb": self.memory_critical_mb},
            )
        others_ready = [o for o in others if o.phase is Phase.READY and o.busy is None]
        coming_back = [
            o.name
            for o in others
            if o.phase in (Phase.RECYCLING, Phase.STARTING, Phase.BACKOFF, Phase.RELOADING)
        ]
        if not others_ready and coming_back:
            return Decision(Action.HOLD, "memory", {**numbers, "waiting_for": coming_back})
        return Decision(Action.RECYCLE, "memory", numbers)

    def on_probe(self, rec: WorkerRecord, result: ProbeResult) -> Decision | None:
        """Count a /health probe of a READY worker; K misses in a row mean hung."""
        over_budget = result.ok and result.probe_ms > self.probe_budget_ms
        if result.ok and not over_budget:
            rec.misses = 0
            return None
        rec.misses += 1
        if rec.misses < self.probe_failures:
            return None
        why = "over_budget" if over_budget else (result.error or "failed")
        return Decision(
            Action.KILL,
            "hang",
            {
                "probe_ms": result.probe_ms,
                "rtt_ms": result.rtt_ms,
                "budget_ms": self.probe_budget_ms,
                "misses": rec.misses,
                "probe_error": why,
            },
        )

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

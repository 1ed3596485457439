"""What `sentiguard up` does about a gateway process or the watchdog that keeps failing.

supervisord restarts the gateway processes and the watchdog by itself (`autorestart`): one
that ran past `startsecs` and died (a SIGKILL, the OOM killer) is started again at once;
one that keeps failing to start (it exits within `startsecs`, `START_RETRIES` times in a
row, with supervisord's backoff of 1, 2, 3 ... s between) goes FATAL and stays down.

The rule (issue 16): never stop a service that can still answer. `up` polls supervisord
(`Keeper.check`, every `POLL_S`) and

- restarts a FATAL gateway process or watchdog itself, after a capped backoff
  (`BACKOFF_FIRST_S`, doubling, at most `BACKOFF_CAP_S`; back to the first step once it
  has run `STEADY_S`), so a fault that heals (a full disk, a model file being replaced)
  is picked up without anybody's help, and one that does not costs a start a few minutes;
- reports every program that is down, backing off or crash-looping (started
  `CRASH_LOOP_STARTS` times within `CRASH_LOOP_WINDOW_S`) in its log line and in
  `<run_dir>/programs.json`, which the gateway adds to /status, /health, /metrics and the
  ops page, and `sentiguard status` prints;
- escalates (stops everything, exits `ExitCode.PROGRAM_FATAL`, 69, naming the program and
  its last log lines, so systemd, Docker or Kubernetes restart the whole service with their
  own capped backoff) only when the service cannot answer: every gateway process is FATAL
  at once (none can stay up: what makes all of them fail five starts in a row, such as an
  unreadable fallback model or a bad setting, does not heal in place), or the watchdog has
  not run for `service.watchdog_down_limit_s` (without it the service still answers, but
  no worker is restarted any more).

A gateway process killed again and again while a sibling serves (measured: churn of one
SIGKILL every 4 s) is a crash loop that is reported, never escalated: the siblings and the
socket `up` holds keep every client answered.

Primary workers are not `up`'s: they are the watchdog's to restart or park, and a worker
that cannot start leaves the fallback answering.
"""

from __future__ import annotations

import contextlib
import time
import xmlrpc.client
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentiguard.runtime import supervisord as sv
from sentiguard.settings import Settings

GATEWAY_GROUP = "gateway"
WATCHDOG_GROUP = "watchdog"
KEPT_GROUPS = frozenset({GATEWAY_GROUP, WATCHDOG_GROUP})
POLL_S = 1.0
CRASH_LOOP_STARTS = 5
CRASH_LOOP_WINDOW_S = 60.0
BACKOFF_FIRST_S = 10.0
BACKOFF_CAP_S = 300.0
# Running this long after a restart by `up` counts as healed: the next FATAL starts the
# backoff from its first step again.
STEADY_S = 60.0
TAIL_LINES = 12
TAIL_BYTES = 8192


@dataclass(frozen=True)
class Verdict:
    """Why `up` stops the service: which program, in which state, and its last words."""

    program: str
    state: str
    reason: str
    exitstatus: int | None
    log: str
    tail: list[str]


@dataclass
class Program:
    """What `up` knows of one gateway process or the watchdog across its polls."""

    name: str
    group: str
    state: str = "UNKNOWN"
    pid: int = 0
    exitstatus: int | None = None
    log: str = ""
    spawnerr: str = ""
    starts: deque[float] = field(default_factory=deque)  # run starts within the window
    running_since: float | None = None
    down_since: float | None = None
    restarts_by_up: int = 0
    backoff_step: int = 0
    restart_at: float | None = None

    def update(self, info: Mapping[str, Any], now: float, window_s: float) -> None:
        self.state = str(info.get("statename"))
        self.pid = int(info.get("pid") or 0)
        self.exitstatus = info.get("exitstatus")
        self.log = str(info.get("stdout_logfile") or "")
        self.spawnerr = str(info.get("spawnerr") or "")
        if self.state == "RUNNING":
            # Only runs that got past `startsecs` count towards a crash loop: failed starts
            # are supervisord's to count (BACKOFF, then FATAL).
            start = float(info.get("start") or 0)
            if start and (not self.starts or self.starts[-1] != start):
                self.starts.append(start)
            self.running_since = start or now
            self.down_since = None
            if now - self.running_since >= STEADY_S:
                self.backoff_step = 0
        else:
            self.down_since = self.down_since if self.down_since is not None else now
        while self.starts and self.starts[0] < now - window_s:
            self.starts.popleft()

    @property
    def crash_loop(self) -> bool:
        return len(self.starts) >= CRASH_LOOP_STARTS

    def backoff_s(self) -> float:
        return min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2**self.backoff_step)

    def problem(self, now: float) -> str | None:
        """What an operator should know about this program now, or None when it is well."""
        if self.state == "FATAL":
            wait = max(0.0, (self.restart_at or now) - now)
            return (
                f"{self.name} cannot start: supervisord gave it up after {sv.START_RETRIES} "
                f"failed starts{f' ({self.spawnerr})' if self.spawnerr else ''}; `up` starts "
                f"it again in {wait:.0f} s. Read {self.log or 'its log'}"
            )
        if self.crash_loop:
            return (
                f"{self.name} restarted {len(self.starts)} times within "
                f"{CRASH_LOOP_WINDOW_S:.0f} s (it keeps dying; supervisord starts it again "
                f"at once). Read {self.log or 'its log'} and the kernel log (OOM kills)"
            )
        if self.state != "RUNNING" and self.down_since is not None and now - self.down_since > 5:
            return f"{self.name} is {self.state} for {now - self.down_since:.0f} s"
        return None

    def view(self, now: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "state": self.state,
            "pid": self.pid or None,
            "starts_in_window": len(self.starts),
            "crash_loop": self.crash_loop,
            "restarts_by_up": self.restarts_by_up,
            "next_restart_in_s": (
                None if self.restart_at is None else round(max(0.0, self.restart_at - now), 1)
            ),
            "down_s": None if self.down_since is None else round(now - self.down_since, 1),
            "problem": self.problem(now),
        }


@dataclass(frozen=True)
class Decision:
    """One poll's outcome: programs to start now, and a verdict when the service cannot
    answer any more."""

    start: tuple[str, ...] = ()
    verdict: Verdict | None = None


def tail(path: str | Path | None, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of a log file (empty when it cannot be read)."""
    if not path:
        return []
    try:
        with Path(path).open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class Keeper:
    """The rule over successive `getAllProcessInfo` answers; no I/O but the log tail.

    `watchdog_down_limit_s` is how long the watchdog may be down before `up` escalates
    (0: never). `started_at` is when `up` started (a watchdog never seen running counts
    as down since then).
    """

    def __init__(
        self,
        watchdog_down_limit_s: float,
        started_at: float,
        window_s: float = CRASH_LOOP_WINDOW_S,
    ) -> None:
        self.watchdog_down_limit_s = watchdog_down_limit_s
        self.started_at = started_at
        self.window_s = window_s
        self.programs: dict[str, Program] = {}

    def decide(self, infos: Iterable[Mapping[str, Any]], now: float) -> Decision:
        for info in infos:
            group = str(info.get("group"))
            if group not in KEPT_GROUPS:
                continue
            name = str(info.get("name"))
            program = self.programs.setdefault(name, Program(name, group, down_since=now))
            if group == WATCHDOG_GROUP and program.running_since is None:
                program.down_since = min(program.down_since or now, self.started_at)
            program.update(info, now, self.window_s)
        gateways = [p for p in self.programs.values() if p.group == GATEWAY_GROUP]
        if gateways and all(p.state == "FATAL" for p in gateways):
            last = max(reversed(gateways), key=lambda p: p.down_since or 0)
            reason = (
                f"no gateway process can stay up: {', '.join(p.name for p in gateways)} each "
                f"failed {sv.START_RETRIES} starts in a row (FATAL)"
                + (f": {last.spawnerr}" if last.spawnerr else "")
            )
            return Decision(verdict=self._verdict(last, reason))
        watchdog = self.programs.get(WATCHDOG_GROUP)
        limit = self.watchdog_down_limit_s
        if (
            watchdog is not None
            and limit > 0
            and watchdog.down_since is not None
            and now - watchdog.down_since >= limit
        ):
            reason = (
                f"the watchdog has not run for {now - watchdog.down_since:.0f} s "
                f"(service.watchdog_down_limit_s = {limit:g}): no worker would be restarted"
            )
            return Decision(verdict=self._verdict(watchdog, reason))
        start = []
        for program in self.programs.values():
            if program.state != "FATAL":
                program.restart_at = None
                continue
            if program.restart_at is None:
                program.restart_at = now + program.backoff_s()
            elif now >= program.restart_at:
                start.append(program.name)
                program.restarts_by_up += 1
                program.backoff_step += 1
                program.restart_at = None
        return Decision(start=tuple(start))

    def _verdict(self, program: Program, reason: str) -> Verdict:
        return Verdict(
            program.name, program.state, reason, program.exitstatus, program.log, tail(program.log)
        )

    def report(self, now: float) -> dict[str, Any]:
        """The programs as `<run_dir>/programs.json` carries them to the gateway."""
        return {
            "updated": now,
            "programs": [p.view(now) for p in self.programs.values()],
            "problems": [pr for p in self.programs.values() if (pr := p.problem(now))],
        }


class Escalation:
    """`up`'s side: one supervisord call per `POLL_S` at most, starts what the keeper says."""

    def __init__(self, settings: Settings, clock: Any = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.keeper = Keeper(float(settings.service.watchdog_down_limit_s), clock())
        self._next = 0.0

    def check(self) -> Decision | None:
        """None when it is not time yet or supervisord does not answer (away or stopping:
        `up` sees its exit by itself)."""
        now = self.clock()
        if now < self._next:
            return None
        self._next = now + POLL_S
        try:
            proxy = sv.rpc(self.settings, timeout=2.0)
            decision = self.keeper.decide(proxy.supervisor.getAllProcessInfo(), now)
        except (OSError, xmlrpc.client.Error):
            return None
        for name in decision.start:
            group = self.keeper.programs[name].group
            # A start that fails is the next FATAL's, with the next backoff step.
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                proxy.supervisor.startProcess(f"{group}:{name}", False)
        return decision

"""When `sentiguard up` gives up: a gateway process or the watchdog supervisord cannot keep.

supervisord restarts the gateway processes and the watchdog by itself (`autorestart`). A
program that keeps failing to start (it exits within `startsecs`, `START_RETRIES` times in a
row, with supervisord's backoff of 1, 2, 3 ... s between) goes FATAL and stays down, and one
that starts, runs a while and dies is restarted at once, for ever. Either way the service
would go on without a gateway process (fewer accept, or none) or without its watchdog (no
worker is restarted any more), while `up`, and so systemd, Docker or Kubernetes, sees nothing.

The choice: escalate. `up` polls supervisord (`Escalation.check`, every `POLL_S`); a gateway
process or the watchdog in FATAL, or started `CRASH_LOOP_STARTS` times within
`CRASH_LOOP_WINDOW_S`, makes `up` log why (the program, its state, its last exit status and
the last lines of its log), stop everything as for a signal, and exit with
`ExitCode.PROGRAM_FATAL` (69). The service manager then restarts the whole service with its
own capped backoff (systemd `Restart=on-failure` + `StartLimitBurst`, Kubernetes'
CrashLoopBackOff) and shows the failure to an operator, where a supervisor restarting the
program for ever in place would hide it: what makes a gateway fail five starts in a row (its
fallback model unreadable, its socket handoff refused, a bad setting) does not heal in place.

Primary workers are never escalated: they are the watchdog's to restart or park, and a
worker that cannot start leaves the fallback answering (`supervisord` runs them with
`autorestart = false`, so their states are the watchdog's business).
"""

from __future__ import annotations

import time
import xmlrpc.client
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentiguard.runtime import supervisord as sv
from sentiguard.settings import Settings

ESCALATED_GROUPS = frozenset({"gateway", "watchdog"})
POLL_S = 1.0
CRASH_LOOP_STARTS = 5
CRASH_LOOP_WINDOW_S = 60.0
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
class StartHistory:
    """The start times supervisord reported for each process, to see a crash loop."""

    window_s: float = CRASH_LOOP_WINDOW_S
    starts: dict[str, deque[float]] = field(default_factory=dict)

    def note(self, name: str, start: float, now: float) -> int:
        """Record `start` (supervisord's start time of the running process) for `name`;
        returns how many distinct starts fall within the window before `now`."""
        seen = self.starts.setdefault(name, deque())
        if start and (not seen or seen[-1] != start):
            seen.append(start)
        while seen and seen[0] < now - self.window_s:
            seen.popleft()
        return len(seen)


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


def decide(infos: Iterable[Mapping[str, Any]], history: StartHistory, now: float) -> Verdict | None:
    """The escalation rule over one `getAllProcessInfo` answer (no I/O but the log tail)."""
    for info in infos:
        if info.get("group") not in ESCALATED_GROUPS:
            continue
        name = str(info.get("name"))
        state = str(info.get("statename"))
        # Only runs that got past `startsecs` count towards a crash loop: failed starts
        # are supervisord's to count (BACKOFF, then FATAL).
        start = float(info.get("start") or 0) if state == "RUNNING" else 0.0
        starts = history.note(name, start, now)
        if state == "FATAL":
            reason = (
                f"supervisord gave {name} up (FATAL) after {sv.START_RETRIES} failed starts"
                + (f": {info['spawnerr']}" if info.get("spawnerr") else "")
            )
        elif starts >= CRASH_LOOP_STARTS:
            reason = (
                f"{name} started {starts} times within {history.window_s:.0f} s: it keeps "
                f"dying after it started"
            )
        else:
            continue
        log = str(info.get("stdout_logfile") or "")
        return Verdict(name, state, reason, info.get("exitstatus"), log, tail(log))
    return None


class Escalation:
    """`up`'s check, one supervisord call per `POLL_S` at most."""

    def __init__(self, settings: Settings, clock: Any = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.history = StartHistory()
        self._next = 0.0

    def check(self) -> Verdict | None:
        now = self.clock()
        if now < self._next:
            return None
        self._next = now + POLL_S
        try:
            infos = sv.rpc(self.settings, timeout=2.0).supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error):
            return None  # supervisord away or stopping: `up` sees its exit by itself
        return decide(infos, self.history, now)

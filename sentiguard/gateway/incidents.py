"""The watchdog's decisions as a timeline a person can read, kept by the gateway.

The watchdog's `PUT /control/watchdog` carries only its last few decisions
(`sentiguard.watchdog.decisions`), so the gateway keeps its own bounded history of them
(`DecisionHistory`, deduplicated by ts + event + worker because every report repeats the
previous ones). `group(decisions)` turns one worker's run of decisions into incidents:

    primary_1 hang: 3 probes missed -> drained, killed, restarted, ready after 9.8 s
    primary_0 crash: killed by a signal -> restart in 1 s, restarted, ready after 8.2 s

An incident opens with the decision that starts an outage (recycle, crash, park, a start
of a worker found stopped, ...) and closes with `ready`; the decisions between are its
steps (event names: docs/internals.md, "Watchdog"). A decision that starts no outage
(`memory_hold`, `worker_stopped`, a `ready` at start-up) is an incident of its own, closed.
The grouping lives here, not in the page, so it is tested on real-shaped decision lists.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

# Decisions kept: a recycle is 4-6 decisions, so this covers ~50 incidents, far more than
# the page's window holds on any service that is not in a crash loop.
DECISIONS_KEPT = 300
# Each kept decision is bounded too: scalars and short lists of them, strings cut.
MAX_FIELDS = 24
MAX_TEXT = 300
MAX_LIST = 16

Decision = dict[str, Any]

# Decisions that are a note of their own and change nothing about an open incident.
STANDALONE = frozenset({"memory_hold", "recycle_held", "worker_stopped"})


class DecisionHistory:
    """The last `keep` distinct decisions the watchdog reported, oldest first; thread-safe."""

    def __init__(self, keep: int = DECISIONS_KEPT) -> None:
        self._items: deque[Decision] = deque()
        self._keys: set[tuple[str, str, str]] = set()
        self.keep = keep
        self._lock = threading.Lock()

    def add(self, decisions: Any) -> int:
        """Keep the decisions of one report not seen before; returns how many were new."""
        if not isinstance(decisions, list):
            return 0
        added = 0
        with self._lock:
            for raw in decisions:
                decision = _bounded(raw)
                if decision is None:
                    continue
                key = (decision["ts"], decision["event"], str(decision.get("worker")))
                if key in self._keys:
                    continue
                if len(self._items) >= self.keep:
                    old = self._items.popleft()
                    self._keys.discard((old["ts"], old["event"], str(old.get("worker"))))
                self._items.append(decision)
                self._keys.add(key)
                added += 1
        return added

    def items(self) -> list[Decision]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _bounded(raw: Any) -> Decision | None:
    """A bounded copy (see MAX_*), or None when it is not a decision."""
    if not isinstance(raw, dict):
        return None
    if not isinstance(raw.get("ts"), str) or not isinstance(raw.get("event"), str):
        return None
    kept: Decision = {}
    for key, value in list(raw.items())[:MAX_FIELDS]:
        if isinstance(value, str):
            kept[str(key)] = value[:MAX_TEXT]
        elif value is None or isinstance(value, bool | int | float):
            kept[str(key)] = value
        elif isinstance(value, list):  # pids, waiting_for: short lists of scalars
            kept[str(key)] = [v for v in value[:MAX_LIST] if isinstance(v, str | int | float)]
    kept.setdefault("ts", raw["ts"][:MAX_TEXT])
    kept.setdefault("event", raw["event"][:MAX_TEXT])
    return kept


@dataclass
class Incident:
    """One worker's outage (or one note), told as one line."""

    worker: str
    cause: str
    ts: str  # the first decision's time (ISO 8601, UTC)
    end_ts: str  # the last decision's time
    headline: str
    steps: list[str] = field(default_factory=list)
    open: bool = True
    recovered_s: float | None = None
    pid: int | None = None
    events: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """`<worker> <headline> -> <step>, <step>, ...`, with "…" while still open."""
        text = f"{self.worker} {self.headline}"
        if self.steps:
            text += " -> " + ", ".join(self.steps)
        return text + (" …" if self.open else "")

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["summary"] = self.summary
        return body


def group(decisions: Iterable[Decision]) -> list[Incident]:
    """The decisions as incidents, oldest first (each worker's run grouped separately)."""
    ordered = sorted(decisions, key=lambda d: str(d.get("ts", "")))
    incidents: list[Incident] = []
    current: dict[str, Incident] = {}  # the open incident of each worker
    for d in ordered:
        worker = str(d.get("worker") or "watchdog")
        event = str(d.get("event"))
        incident = current.get(worker)
        if event in STANDALONE or (event == "ready" and incident is None):
            incidents.append(_note(worker, d))
            continue
        if incident is None or event == "recycle":
            if incident is not None:
                incident.steps.append("no ready reported")
                incident.open = False
            incident = _open(worker, d)
            current[worker] = incident
            incidents.append(incident)
        else:
            _step(incident, d)
        incident.end_ts = str(d["ts"])
        incident.events.append(event)
        if event == "ready":
            incident.open = False
            incident.recovered_s = _number(d.get("recovered_s"))
            del current[worker]
    return incidents


def _open(worker: str, d: Decision) -> Incident:
    event = str(d["event"])
    reason = d.get("reason")
    incident = Incident(worker, str(reason or event), str(d["ts"]), str(d["ts"]), "")
    incident.pid = d.get("pid") if isinstance(d.get("pid"), int) else None
    if event == "recycle":
        incident.headline = _recycle_headline(d)
    elif event == "crash":
        incident.cause = "crash"
        incident.headline = f"crash: {reason or 'exited'}"
        _step(incident, d)
    elif event == "park":
        incident.cause = "cannot_start"
        incident.headline = f"cannot start: model {d.get('cause') or 'failed to load'}"
        _step(incident, d)
    elif event == "start":
        # A start that opens an incident: the worker was found stopped (or parked before
        # this history began).
        incident.headline = f"down ({str(reason or 'stopped').replace('_', ' ')})"
        _step(incident, d)
    else:
        # start_timeout, start_failed, action_failed (or a recycle's later step whose start
        # fell out of the history): the step says it all.
        incident.cause = event
        incident.headline = ", ".join(_words(incident, d))
    return incident


def _recycle_headline(d: Decision) -> str:
    reason = str(d.get("reason"))
    if reason == "hang":
        misses = d.get("misses")
        why = d.get("probe_error")
        if why == "no_progress" and isinstance(d.get("stalled_ms"), int | float):
            return (
                f"hang: no batch finished for {_s(d['stalled_ms'])} with work waiting "
                f"(window {_s(d.get('window_ms'))})"
            )
        if why == "wrong_answer":
            return f"wrong answer to the known-answer check, {d.get('wrong')} times in a row"
        detail = f" ({why})" if why and why != "failed" else ""
        return f"hang: {misses} probes missed{detail}" if misses else f"hang{detail}"
    if reason == "slow_check":
        return (
            f"known-answer check slower than its {_s(d.get('budget_ms'))} budget "
            f"{d.get('slow')} times in a row"
        )
    if reason.startswith("memory"):
        used, kind = _used_mb(d)
        limit = d.get("critical_mb") if reason == "memory_critical" else d.get("limit_mb")
        which = "critical limit" if reason == "memory_critical" else "limit"
        over = f"{kind} {used:.0f} MB over the {_mb(limit)} {which}" if used else "over limit"
        samples = d.get("samples")
        return f"memory: {over}" + (f" ({samples} samples)" if samples else "")
    return f"{reason}: recycled"


def _s(ms: Any) -> str:
    return f"{ms / 1000:.1f} s" if isinstance(ms, int | float) else "?"


def _step(incident: Incident, d: Decision) -> None:
    incident.steps.extend(_words(incident, d))


def _words(incident: Incident, d: Decision) -> list[str]:
    """What one decision did, as the steps of its incident."""
    event = str(d["event"])
    if event == "drained":
        in_flight = d.get("in_flight")
        if d.get("gateway") is False:
            return ["drained (gateway unreachable)"]
        return [f"drained ({in_flight} in flight)" if in_flight else "drained"]
    if event in ("stopped", "killed"):
        return [event, "restarted"]  # their action is the start: no `start` decision follows
    if event == "start":
        return ["restarted"]
    if event == "crash":
        backoff = _number(d.get("backoff_s"))
        restart = f"restart in {backoff:g} s" if backoff is not None else "restart"
        # A crash that opens the incident is its headline; after a failed start it repeats it.
        if not incident.events or incident.events[-1] == "start_failed":
            return [restart]
        return [f"crashed ({d.get('reason') or 'exited'})", restart]
    if event == "park":
        retry = _number(d.get("retry_s"))
        return [f"parked, retry in {retry:g} s" if retry is not None else "parked"]
    if event == "start_slow":
        return [f"still loading after {_number(d.get('waited_s')) or 0:g} s"]
    if event == "start_timeout":
        return ["stuck while starting", "killed"]
    if event == "start_failed":
        return [f"start failed ({d.get('reason') or 'exited'})"]
    if event == "ready":
        recovered = _number(d.get("recovered_s"))
        return [f"ready after {recovered:g} s" if recovered is not None else "ready"]
    if event == "action_failed":
        return [f"{d.get('action')} failed: {d.get('reason')}"]
    return [event.replace("_", " ")]


def _note(worker: str, d: Decision) -> Incident:
    """A decision that is a timeline entry of its own."""
    event = str(d["event"])
    ts = str(d["ts"])
    pid = d.get("pid") if isinstance(d.get("pid"), int) else None
    if event == "ready":
        waited = _number(d.get("waited_s"))
        loaded = f", after {waited:g} s of loading" if waited else ""
        headline = f"ready (pid {pid}{loaded})"
    elif event in ("memory_hold", "recycle_held"):
        used, kind = _used_mb(d)
        over = f"{kind} {used:.0f} MB over the {_mb(d.get('limit_mb'))} limit" if used else ""
        if event == "memory_hold":
            waiting = d.get("waiting_for")
            if isinstance(waiting, list):
                waiting = ", ".join(str(w) for w in waiting)
            why = "recycle held: it is the last ready worker"
            why += f" (waiting for {waiting})" if waiting else ""
        else:
            why = "recycle held until the reload ends"
        headline = f"memory: {over}, {why}" if over else f"memory: {why}"
    else:  # worker_stopped
        headline = "stopped outside the watchdog: left alone until started"
    return Incident(worker, event, ts, ts, headline, open=False, pid=pid, events=[event])


def _used_mb(d: Decision) -> tuple[float | None, str]:
    """What the watchdog measures against the limit: USS when known, else RSS."""
    uss = _number(d.get("uss_mb"))
    if uss is not None:
        return uss, "USS"
    return _number(d.get("rss_mb")), "RSS"


def _mb(value: Any) -> str:
    number = _number(value)
    return f"{number:.0f} MB" if number is not None else "configured"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)

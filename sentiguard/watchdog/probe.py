"""HTTP probes of one worker's loopback port: `/live`, `/health` and `/ready`.

`/live` is liveness: the worker's HTTP thread answers it from counters, never waiting
behind a batch, so no answer at all means the process is stopped or wedged, and its
`progress` counters say whether a busy worker still finishes batches (`LiveResult`).
`/health` is the known-answer check: it runs the known-answer texts through the
worker's real batched path and is 503 `wrong_answer` when the model gets them wrong. It
reports `probe_ms` (the worker's own measure) beside `rtt_ms`, the round trip as the
watchdog timed it, which includes any wait behind a running batch. `/ready` gates a
start.

Each probe is one short-lived connection with its own timeout; the watchdog runs them in
threads (`ProbePool`), so a hung worker delays no one else.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sentiguard.runtime.endpoints import WORKER_HOST, probe_error
from sentiguard.runtime.net import get_json
from sentiguard.watchdog.limits import MemoryProfile


class Kind(StrEnum):
    """The two probes the loop keeps in flight per worker."""

    LIVE = "live"  # GET /live, every round
    CHECK = "check"  # GET /health, the known-answer check, every check_interval_s


@dataclass(frozen=True)
class ProbeResult:
    """One /health check. `ok` is False on a timeout, a refused connection or a non-200.

    `error` is None on success, else one of "timeout", "refused", "wrong_answer",
    "draining", "loading", "status_<code>", "bad_body" or the OSError's name.
    """

    ok: bool
    probe_ms: float
    error: str | None = None
    rtt_ms: float | None = None

    @property
    def timed_out(self) -> bool:
        return self.error == "timeout"


@dataclass(frozen=True)
class Progress:
    """GET /live `progress`: what a worker's batcher has done and holds (times in ms)."""

    batches: int = 0
    texts: int = 0
    queued: int = 0
    running: int = 0
    oldest_running_ms: float | None = None
    last_batch_ago_ms: float | None = None
    batch_ms: float | None = None  # EWMA of batch times
    batch_ms_max: float | None = None  # longest of the last 64
    dropped: int = 0

    @property
    def has_work(self) -> bool:
        return self.queued > 0 or self.running > 0


@dataclass(frozen=True)
class LiveResult:
    """One GET /live. `ok`: the HTTP thread answered (any status); else `error` says why.

    A worker without /live (404, an older build) answered all the same: alive, with no
    counters (`progress` None), so only the no-answer rule applies to it.
    """

    ok: bool
    rtt_ms: float
    error: str | None = None
    pid: int | None = None
    progress: Progress | None = None
    memory: MemoryProfile | None = None

    @property
    def timed_out(self) -> bool:
        return self.error == "timeout"


def _get(port: int, path: str, timeout_s: float) -> tuple[int, dict[str, Any] | None]:
    return get_json(WORKER_HOST, port, path, timeout_s)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def probe_health(port: int, timeout_s: float) -> ProbeResult:
    """GET /health and time it. Never raises."""
    started = time.monotonic()
    try:
        status, body = _get(port, "/health", timeout_s)
    except OSError as e:
        elapsed = _ms_since(started)
        return ProbeResult(ok=False, probe_ms=elapsed, error=probe_error(e), rtt_ms=elapsed)
    elapsed = _ms_since(started)
    if status != 200:
        said = (body or {}).get("status")
        known = said in ("wrong_answer", "draining", "loading")
        return ProbeResult(False, elapsed, str(said) if known else f"status_{status}", elapsed)
    if body is None:
        return ProbeResult(False, elapsed, "bad_body", elapsed)
    reported = body.get("probe_ms")
    probe_ms = float(reported) if isinstance(reported, int | float) else elapsed
    return ProbeResult(True, round(probe_ms, 1), None, elapsed)


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def parse_progress(raw: Any) -> Progress | None:
    if not isinstance(raw, dict):
        return None

    def count(key: str) -> int:
        return int(_number(raw.get(key)) or 0)

    return Progress(
        batches=count("batches"),
        texts=count("texts"),
        queued=count("queued"),
        running=count("running"),
        oldest_running_ms=_number(raw.get("oldest_running_ms")),
        last_batch_ago_ms=_number(raw.get("last_batch_ago_ms")),
        batch_ms=_number(raw.get("batch_ms")),
        batch_ms_max=_number(raw.get("batch_ms_max")),
        dropped=count("dropped"),
    )


def parse_memory(raw: Any) -> MemoryProfile | None:
    if not isinstance(raw, dict):
        return None
    ready, peak = _number(raw.get("ready_mb")), _number(raw.get("peak_mb"))
    if ready is None or peak is None:
        return None
    batch, tokens = _number(raw.get("batch")), _number(raw.get("tokens"))
    return MemoryProfile(ready, peak, int(batch or 0), int(tokens or 0))


def probe_live(port: int, timeout_s: float) -> LiveResult:
    """GET /live. Never raises; any HTTP answer is `ok` (the worker's HTTP thread lives)."""
    started = time.monotonic()
    try:
        status, body = _get(port, "/live", timeout_s)
    except OSError as e:
        return LiveResult(False, _ms_since(started), probe_error(e))
    elapsed = _ms_since(started)
    if status != 200 or body is None:
        return LiveResult(True, elapsed, None if status == 404 else f"status_{status}")
    pid = body.get("pid")
    return LiveResult(
        True,
        elapsed,
        None,
        pid if isinstance(pid, int) else None,
        parse_progress(body.get("progress")),
        parse_memory(body.get("memory")),
    )


Probe = Callable[[int, float], Any]  # (port, timeout_s) -> LiveResult | ProbeResult


class ProbePool:
    """The watchdog's probes in flight: at most one of each `Kind` per worker, in threads.

    One thread each, so no hung probe waits for another; one outstanding per worker and
    kind, so a hung worker costs two threads, not one per round. The loop starts a
    worker's next probe after it collected the last one. `on_timeout` is called when a
    /live probe times out: the hang's signature, worth a round at once (a refused
    connection is not: it would spin the loop, while a timeout cannot repeat faster than
    the probe timeout).
    """

    def __init__(
        self,
        probes: dict[Kind, Probe],
        workers: int,
        *,
        clock: Callable[[], float],
        on_timeout: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.probes = probes
        self.clock = clock
        self.on_timeout = on_timeout
        self.stop = stop
        # (worker name, kind) -> (pid probed, when submitted, its timeout, the probe)
        self.pending: dict[tuple[str, Kind], tuple[int, float, float, Future[Any]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2 * workers + 2, thread_name_prefix="probe")

    def start(self, name: str, port: int, pid: int, kind: Kind, timeout_s: float) -> None:
        """Probe `name` unless a probe of that kind is still outstanding."""
        key = (name, kind)
        if key in self.pending or self.stop.is_set():
            return
        future = self._pool.submit(self.probes[kind], port, timeout_s)
        self.pending[key] = (pid, self.clock(), timeout_s, future)
        if kind is Kind.LIVE:
            future.add_done_callback(self._done)

    def _done(self, future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None and future.result().timed_out:
            self.on_timeout()

    def collect(self, name: str, pid: int, kind: Kind) -> Any:
        """The result of `name`'s finished probe of process `pid`, once; else None."""
        pending = self.pending.get((name, kind))
        if pending is None:
            return None
        probed_pid, submitted, timeout_s, future = pending
        if not future.done() and self.clock() - submitted >= timeout_s:
            # Its timeout has passed, so it is about to end: a short wait here keeps one
            # miss per round instead of one per two rounds when interval ~ timeout.
            with contextlib.suppress(TimeoutError):
                future.result(timeout=0.1)
        if not future.done():
            return None
        del self.pending[(name, kind)]
        # A probe of an earlier process says nothing about this one.
        return future.result() if probed_pid == pid else None

    def outstanding(self, name: str, kind: Kind) -> bool:
        return (name, kind) in self.pending

    def forget(self, name: str) -> None:
        """Drop `name`'s outstanding probes: an action owns the worker now."""
        for kind in Kind:
            self.pending.pop((name, kind), None)

    def idle(self) -> bool:
        """No probe is running (tests wait for this between rounds)."""
        return all(future.done() for *_, future in list(self.pending.values()))

    def shutdown(self, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)

"""HTTP probes of one worker's loopback port: `/health` (liveness) and `/ready`.

`/health` runs a known-answer sentence through the worker's real inference path, so a
worker whose HTTP thread answers but whose model is stuck still fails it. Two numbers:
`probe_ms`, the inference time the worker reports (its own measure, so a probe queued
behind a busy batch under load is not mistaken for a slow model), and `rtt_ms`, the whole
round trip as the watchdog timed it (bounded by the timeout: a SIGSTOPped worker never
reports anything). Without a reported `probe_ms`, the round trip stands in for it.

Each probe is one short-lived connection with its own timeout; the watchdog runs the
probes of different workers in different threads (`ProbePool`), so a hung worker delays
no one else.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sentiguard.runtime.endpoints import WORKER_HOST
from sentiguard.runtime.net import get_json


@dataclass(frozen=True)
class ProbeResult:
    """One /health probe. `ok` is False on a timeout, a refused connection or a non-200.

    `error` is None on success, else one of "timeout", "refused", "status_<code>",
    "bad_body" or the OSError's name.
    """

    ok: bool
    probe_ms: float
    error: str | None = None
    rtt_ms: float | None = None

    @property
    def timed_out(self) -> bool:
        return self.error == "timeout"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    model_version: str | None = None
    pid: int | None = None
    error: str | None = None


def _error_name(e: OSError) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e.__cause__, http.client.HTTPException):
        return "bad_response"  # get_json raises a malformed answer as an OSError
    return type(e).__name__


def _get(port: int, path: str, timeout_s: float) -> tuple[int, dict[str, Any] | None]:
    return get_json(WORKER_HOST, port, path, timeout_s)


def probe_health(port: int, timeout_s: float) -> ProbeResult:
    """GET /health and time it. Never raises."""
    started = time.monotonic()
    try:
        status, body = _get(port, "/health", timeout_s)
    except OSError as e:
        elapsed = round((time.monotonic() - started) * 1000, 1)
        return ProbeResult(ok=False, probe_ms=elapsed, error=_error_name(e), rtt_ms=elapsed)
    elapsed = round((time.monotonic() - started) * 1000, 1)
    if status != 200:
        return ProbeResult(False, elapsed, f"status_{status}", elapsed)
    if body is None:
        return ProbeResult(False, elapsed, "bad_body", elapsed)
    reported = body.get("probe_ms")
    probe_ms = float(reported) if isinstance(reported, int | float) else elapsed
    return ProbeResult(True, round(probe_ms, 1), None, elapsed)


def probe_ready(port: int, timeout_s: float) -> Readiness:
    """GET /ready. Never raises; `ready` is True only on 200 with `"ready": true`."""
    try:
        status, body = _get(port, "/ready", timeout_s)
    except OSError as e:
        return Readiness(False, error=_error_name(e))
    if status != 200 or not body or body.get("ready") is not True:
        reason = (body or {}).get("reason") or f"status_{status}"
        return Readiness(False, error=str(reason))
    pid = body.get("pid")
    return Readiness(
        True,
        model_version=str(body.get("model_version")),
        pid=pid if isinstance(pid, int) else None,
    )


class ProbePool:
    """The watchdog's /health probes in flight: at most one per worker, each in a thread.

    One thread each, so no hung probe waits for another; one outstanding per worker, so a
    hung worker costs one thread, not one per round. The loop starts a worker's next probe
    after it collected the last one. `on_timeout` is called when a probe times out: the
    hang's signature, worth a round at once (a refused connection is not: it would spin the
    loop, while a timeout cannot repeat faster than the probe timeout).
    """

    def __init__(
        self,
        health: Callable[[int, float], ProbeResult],
        timeout_s: float,
        workers: int,
        *,
        clock: Callable[[], float],
        on_timeout: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.health = health
        self.timeout_s = timeout_s
        self.clock = clock
        self.on_timeout = on_timeout
        self.stop = stop
        # worker name -> (pid probed, when submitted, the probe)
        self.pending: dict[str, tuple[int, float, Future[ProbeResult]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers + 2, thread_name_prefix="probe")

    def start(self, name: str, port: int, pid: int) -> None:
        """Probe `name` unless a probe of it is still outstanding."""
        if name in self.pending or self.stop.is_set():
            return
        future = self._pool.submit(self.health, port, self.timeout_s)
        self.pending[name] = (pid, self.clock(), future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[ProbeResult]) -> None:
        if not future.cancelled() and future.exception() is None and future.result().timed_out:
            self.on_timeout()

    def collect(self, name: str, pid: int) -> ProbeResult | None:
        """The result of `name`'s finished probe of process `pid`, once; else None."""
        pending = self.pending.get(name)
        if pending is None:
            return None
        probed_pid, submitted, future = pending
        if not future.done() and self.clock() - submitted >= self.timeout_s:
            # Its timeout has passed, so it is about to end: a short wait here keeps one
            # miss per round instead of one per two rounds when interval ~ timeout.
            with contextlib.suppress(TimeoutError):
                future.result(timeout=0.1)
        if not future.done():
            return None
        del self.pending[name]
        # A probe of an earlier process says nothing about this one.
        return future.result() if probed_pid == pid else None

    def forget(self, name: str) -> None:
        """Drop `name`'s outstanding probe: an action owns the worker now."""
        self.pending.pop(name, None)

    def idle(self) -> bool:
        """No probe is running (tests wait for this between rounds)."""
        return all(future.done() for _, _, future in list(self.pending.values()))

    def shutdown(self, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)

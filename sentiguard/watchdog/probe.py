"""HTTP probes of one worker's loopback port: `/health` (liveness) and `/ready`.

`/health` runs a known-answer sentence through the worker's real inference path, so a
worker whose HTTP thread answers but whose model is stuck still fails it. Two numbers:
`probe_ms`, the inference time the worker reports (its own measure, so a probe queued
behind a busy batch under load is not mistaken for a slow model), and `rtt_ms`, the whole
round trip as the watchdog timed it (bounded by the timeout: a SIGSTOPped worker never
reports anything). Without a reported `probe_ms`, the round trip stands in for it.

Each probe is one short-lived connection with its own timeout; the watchdog runs the
probes of different workers in different threads, so a hung worker delays no one else.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProbeResult:
    """One /health probe. `ok` is False on a timeout, a refused connection or a non-200.

    `error` is None on success, else one of "timeout", "refused", "status_<code>",
    "bad_body" or the OSError's name.
    """

    ok: bool
    probe_ms: float
    error: str | None = None
    status: int | None = None
    body: dict[str, Any] | None = None
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


def get_json(
    port: int, path: str, timeout_s: float, host: str = "127.0.0.1"
) -> tuple[int, dict[str, Any] | None]:
    """GET a JSON document; raises TimeoutError / OSError as http.client does."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        body = json.loads(data) if data else None
    except ValueError:
        body = None
    return response.status, body if isinstance(body, dict) else None


def _error_name(e: OSError) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    return type(e).__name__


def probe_health(port: int, timeout_s: float) -> ProbeResult:
    """GET /health and time it. Never raises."""
    started = time.monotonic()
    try:
        status, body = get_json(port, "/health", timeout_s)
    except (OSError, http.client.HTTPException) as e:
        elapsed = (time.monotonic() - started) * 1000
        name = _error_name(e) if isinstance(e, OSError) else "bad_response"
        elapsed = round(elapsed, 1)
        return ProbeResult(ok=False, probe_ms=elapsed, error=name, rtt_ms=elapsed)
    elapsed = round((time.monotonic() - started) * 1000, 1)
    if status != 200:
        return ProbeResult(False, elapsed, f"status_{status}", status, body, elapsed)
    if body is None:
        return ProbeResult(False, elapsed, "bad_body", status, None, elapsed)
    reported = body.get("probe_ms")
    probe_ms = float(reported) if isinstance(reported, int | float) else elapsed
    return ProbeResult(True, round(probe_ms, 1), None, status, body, elapsed)


def probe_ready(port: int, timeout_s: float) -> Readiness:
    """GET /ready. Never raises; `ready` is True only on 200 with `"ready": true`."""
    try:
        status, body = get_json(port, "/ready", timeout_s)
    except (OSError, http.client.HTTPException) as e:
        name = _error_name(e) if isinstance(e, OSError) else "bad_response"
        return Readiness(False, error=name)
    if status != 200 or not body or body.get("ready") is not True:
        reason = (body or {}).get("reason") or f"status_{status}"
        return Readiness(False, error=str(reason))
    pid = body.get("pid")
    return Readiness(
        True,
        model_version=str(body.get("model_version")),
        pid=pid if isinstance(pid, int) else None,
    )

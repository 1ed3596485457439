"""The watchdog's side of the gateway's control socket: drain, undrain, report.

Contract (docs/internals.md): `PUT /control/workers/<name>` with the worker's state and a
`drain` flag answers `{"name", "in_flight", "drain"}`; `PUT /control/watchdog` takes the
summary. The gateway routes safely without us (its own breakers), so an unreachable
gateway is logged once when it goes away and once when it comes back, and never stops
the watchdog from restarting workers.

A gateway that is still starting is not an outage: supervisord starts every program at
once, and the gateway opens its control socket only after loading its fallback model. Until
the gateway was reached once, a missing, refusing or silent socket is not logged for
`start_grace_s` (default `watchdog.start_timeout_s`). A missing secret is logged at once
(`up` writes it before anything starts), and so is any failure after the first contact.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from typing import Any

from sentiguard.runtime.control import ControlClient
from sentiguard.settings import Settings

Body = dict[str, Any]
LogEvent = Callable[..., None]  # log(event, **fields): an EventLog, or the DecisionLog


class GatewayLink:
    """Thread-safe: the loop reports while action threads drain."""

    def __init__(
        self,
        settings: Settings,
        log: LogEvent,
        timeout_s: float = 1.0,
        start_grace_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.log = log
        self.timeout_s = timeout_s
        grace = settings.watchdog.start_timeout_s if start_grace_s is None else start_grace_s
        self.clock = clock
        self._grace_until = clock() + grace
        self._lock = threading.Lock()
        self._reachable: bool | None = None  # None: not reached yet

    def _starting(self) -> bool:
        """Never reached and still within the start grace: the gateway may be loading."""
        with self._lock:
            return self._reachable is None and self.clock() < self._grace_until

    def _note(self, ok: bool, error: str | None = None) -> None:
        with self._lock:
            before, self._reachable = self._reachable, ok
        if ok and before is False:
            self.log("gateway_reachable", action="resume reports")
        elif not ok and before is not False:
            self.log(
                "gateway_unreachable",
                reason=error,
                action="keep watching and restarting; drains skipped until it is back",
                fix="check `sentiguard status` and logs/gateway.log",
            )

    def request(self, method: str, path: str, body: Body) -> Any | None:
        """One control request; None (and a once-only log line) when the gateway is away."""
        try:
            # A fresh client each time re-reads the secret, so a new `up` is picked up.
            client = ControlClient(self.settings, timeout=self.timeout_s)
        except OSError as e:
            self._note(False, f"{type(e).__name__}: {e}")
            return None
        try:
            status, answer = client.request(method, path, body)
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as e:
            if not self._starting():
                self._note(False, f"{type(e).__name__}: {e}")
            return None
        except (OSError, http.client.HTTPException, ValueError) as e:
            self._note(False, f"{type(e).__name__}: {e}")
            return None
        if status != 200:
            self._note(False, f"{method} {path} answered {status}: {answer}")
            return None
        self._note(True)
        return answer

    def put_worker(self, name: str, body: Body) -> int | None:
        """Report one worker; returns the gateway's `in_flight` for it, or None."""
        answer = self.request("PUT", f"/control/workers/{name}", body)
        if not isinstance(answer, dict):
            return None
        in_flight = answer.get("in_flight")
        return in_flight if isinstance(in_flight, int) else 0

    def put_watchdog(self, body: Body) -> bool:
        return self.request("PUT", "/control/watchdog", body) is not None

    def drain_and_wait(
        self,
        name: str,
        body: Callable[[], Body],
        timeout_s: float,
        stop: threading.Event,
        poll_s: float = 0.1,
    ) -> tuple[int | None, float]:
        """Drain `name` and wait until its in-flight requests finish or `timeout_s` passes.

        `body()` builds the report (with `"drain": true`); it is re-sent on every poll, so a
        report racing it from another process cannot undrain the worker for long.
        Returns (in_flight at the end or None if the gateway is away, seconds waited).
        """
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            in_flight = self.put_worker(name, body())
            if in_flight is None or in_flight == 0 or time.monotonic() >= deadline:
                return in_flight, round(time.monotonic() - started, 2)
            if stop.wait(poll_s):
                return in_flight, round(time.monotonic() - started, 2)

"""The watchdog process (`python -m sentiguard.watchdog`, run by supervisord).

`Watchdog.run()` repeats, until `stop()`: wait half of `watchdog.interval_s` (less when a
probe times out), then one round of checks (`watch.Watch.round`), which samples memory
only once an interval. SIGTERM and SIGINT only set the stop flag; the loop finishes its
round, gives running actions a moment to notice, logs `watchdog_stopped` and exits 0.
Settings come from the `SENTIGUARD_*` environment `sentiguard up` hands to every program.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

from sentiguard import settings as settings_mod
from sentiguard.errors import ExitCode, SettingsError
from sentiguard.logs import exit_now
from sentiguard.runtime import memory
from sentiguard.runtime.drain import GatewayLink
from sentiguard.runtime.endpoints import Readiness, probe_ready
from sentiguard.runtime.recycle import Recycler
from sentiguard.runtime.supervisor_client import SupervisorClient
from sentiguard.settings import Settings
from sentiguard.watchdog.actions import WorkerActions
from sentiguard.watchdog.decisions import DecisionLog
from sentiguard.watchdog.policy import Policy
from sentiguard.watchdog.probe import (
    Kind,
    LiveResult,
    ProbePool,
    ProbeResult,
    probe_health,
    probe_live,
)
from sentiguard.watchdog.watch import Watch

# An action (a drain, a stop) waits on the stop flag, so it ends soon after it is set; one
# stuck in an XML-RPC call is a daemon thread and must not hold up the exit.
ACTION_JOIN_S = 2.0


class Watchdog:
    """The process: builds the collaborators, then `run()` blocks until `stop()`.

    The collaborators that touch the world are parameters, so tests can fake supervisord,
    the gateway, HTTP, memory and time; the defaults are the real ones.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        supervisor: SupervisorClient | None = None,
        gateway: GatewayLink | None = None,
        decisions: DecisionLog | None = None,
        sample: Callable[[int], memory.MemorySample | None] = memory.sample,
        health: Callable[[int, float], ProbeResult] = probe_health,
        live: Callable[[int, float], LiveResult] = probe_live,
        ready: Callable[[int, float], Readiness] = probe_ready,
        kill: Callable[[int], list[int]] = memory.kill_tree,
        cpu: Callable[[int], float | None] = memory.cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        w = settings.watchdog
        self.interval_s = w.interval_s
        self.policy = Policy(settings)
        self.decisions = decisions or DecisionLog.open(settings)
        self.stop_event = threading.Event()
        self.wake = threading.Event()  # set by a timed-out probe: run a round now
        supervisor = supervisor or SupervisorClient(settings)
        gateway = gateway or GatewayLink(settings, self.decisions)
        records_lock = threading.RLock()
        report_lock = threading.Lock()
        self.probes = ProbePool(
            {Kind.LIVE: live, Kind.CHECK: health},
            settings.primary.workers,
            clock=clock,
            on_timeout=self.wake.set,
            stop=self.stop_event,
        )
        self.actions = WorkerActions(
            self.policy,
            supervisor,
            # With the gateway link, a restarted worker counts as ready once every gateway
            # process routes to it, so the next recycle never leaves a gateway none.
            Recycler(
                settings, supervisor, self.stop_event, kill=kill, ready_probe=ready, gateway=gateway
            ),
            gateway,
            self.decisions,
            self.probes,
            lock=records_lock,
            report_lock=report_lock,
            stop=self.stop_event,
            drain_timeout_s=w.drain_timeout_s,
            kill=kill,
            cpu=cpu,
            clock=clock,
        )
        self.watch = Watch(
            settings,
            self.policy,
            supervisor,
            gateway,
            self.decisions,
            self.actions,
            self.probes,
            lock=records_lock,
            report_lock=report_lock,
            sample=sample,
            clock=clock,
        )

    def run(self) -> int:
        self.decisions("watchdog_started", pid=os.getpid(), action="watch", **self.policy.limits())
        try:
            last_full = time.monotonic()
            self._safe_round(full=True)
            while not self.stop_event.is_set():
                # Probe rounds come twice an interval, and a timed-out /live wakes us at
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
            self.probes.shutdown(wait=False)
            self.actions.join(ACTION_JOIN_S)
            self.decisions("watchdog_stopped", pid=os.getpid(), action="exit")
        return 0

    def _safe_round(self, full: bool) -> None:
        # A bug or a surprise in one round (an odd XML-RPC fault, a psutil race) must not
        # end the watch: log it and try again next round. supervisord would restart us,
        # but with every record, backoff and counter lost.
        try:
            self.watch.round(full=full)
        except Exception as e:
            self.decisions(
                "round_failed", reason=f"{type(e).__name__}: {e}", action="retry next round"
            )

    def stop(self) -> None:
        """Ask the loop to finish its round and exit; safe from a signal handler."""
        self.stop_event.set()
        self.wake.set()


def run() -> int:
    """Load the settings, install the signal handlers, watch until stopped; an exit code."""
    try:
        settings = settings_mod.load()
    except SettingsError as e:
        print(f"sentiguard.watchdog: {e}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    watchdog = Watchdog(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        watchdog.stop()  # only the flag: the loop does the rest

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return watchdog.run()


def main() -> NoReturn:
    """`python -m sentiguard.watchdog`: run, then exit without interpreter teardown.

    Teardown would join the probe threads, and one may still wait on a hung worker for
    its whole timeout while supervisord's stop is counting (`logs.exit_now`).
    """
    exit_now(run())

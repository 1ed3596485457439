"""When supervisord dies under `sentiguard up`: a new one, and the programs replaced one by one.

supervisord is one small process, and its death must cost clients nothing. Its programs
outlive it (each leads its own process group) and, `up` being a child subreaper, become
`up`'s children; the listening socket is `up`'s and stays open. But they cannot stay as
they are: supervisord held the read end of every program's stdout, so each log line they
write now fails (EPIPE), nobody restarts them when they die, and a new supervisord cannot
adopt a process it did not start (supervisor has no such call).

So `up` replaces them, one at a time, each only once its replacement serves:

1. the watchdog is stopped first (it would act on the new supervisord's view, where every
   program is STOPPED, and start a worker whose port the old one still holds);
2. a new supervisord is started on a config with `autostart = false` (it starts nothing by
   itself) and answers within `SUPERVISORD_START_S`;
3. each gateway process: its replacement is started and answers on its control socket
   (it takes the socket from `up`, so both accept from the one backlog), then the old one
   gets SIGTERM and drains what it accepted;
4. each worker: drained at every gateway (its share goes to the other worker or the
   fallback), SIGTERM once nothing is in flight there, its replacement started and waited
   for until every gateway routes to it, then undrained;
5. the watchdog is started again.

Why one by one (docs/resilience.md, "What supervises the service"): measured with the chaos
scenario `supervisord_kill`, the replacement answered every request, all from the primary,
none refused or failed. Stopping every program at once and starting them again as at `up`
would leave no gateway accepting for a gateway's start (connections wait in the backlog)
and no worker answering for a worker's cold start (20-30 s here, the fallback answering
everything meanwhile), and lose what the stopped workers had in flight.
"""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.control import ControlClient
from sentiguard.runtime.drain import GatewayLink
from sentiguard.runtime.endpoints import worker_name
from sentiguard.runtime.memory import stop_gracefully
from sentiguard.runtime.paths import RunDir, write_private
from sentiguard.runtime.recycle import START_CAP_FACTOR, Recycler
from sentiguard.runtime.supervisor_client import SupervisorClient
from sentiguard.settings import Settings

SUPERVISORD_START_S = 30.0
GATEWAY_START_S = 60.0
LogEvent = Callable[..., None]


@dataclass(frozen=True)
class Orphan:
    """A program the dead supervisord left running (now a child of `up`)."""

    group: str
    name: str
    process: psutil.Process


@dataclass
class Outcome:
    """What a takeover did: the new supervisord (None: it could not be started) and, per
    program, how its replacement went."""

    proc: subprocess.Popen[bytes] | None
    steps: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def orphans() -> list[Orphan]:
    """The programs among `up`'s children, told apart by the names supervisord gave them
    in their environment."""
    found = []
    for p in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            env = p.environ()
            group, name = env.get("SUPERVISOR_GROUP_NAME"), env.get("SUPERVISOR_PROCESS_NAME")
            if group and name and p.status() != psutil.STATUS_ZOMBIE:
                found.append(Orphan(group, name, p))
    return found


class Takeover:
    """One takeover run (see the module docstring), in a thread of `up`'s. `stop` set
    (by `up`'s loop, on a signal) ends it at the next step or wait, and `up` stops the
    rest as usual."""

    def __init__(self, settings: Settings, log: LogEvent, stop: threading.Event) -> None:
        self.settings = settings
        self.log = log
        self.stop = stop
        self.stop_wait_s = float(sv.stop_wait_s(settings)) + 1.0
        self.supervisor = SupervisorClient(settings)
        self.gateway = GatewayLink(settings, log, start_grace_s=0.0)
        self.recycler = Recycler(settings, self.supervisor, stop, gateway=self.gateway)
        self.outcome = Outcome(None)

    def stopping(self) -> bool:
        return self.stop.is_set()

    def run(self) -> Outcome:
        started = time.monotonic()
        left = {(o.group, o.name): o for o in orphans()}
        outcome = self.outcome
        for key in [k for k in left if k[0] == "watchdog"]:
            self._retire(left.pop(key))
        outcome.proc = self._start_supervisord()
        if outcome.proc is None:
            return outcome
        for i in range(self.settings.gateway.processes):
            if self.stopping():
                break
            name = sv.gateway_process_name(i)
            outcome.steps[name] = self._replace_gateway(name, left.pop(("gateway", name), None))
        for i in range(self.settings.primary.workers):
            if self.stopping():
                break
            name = worker_name(i)
            outcome.steps[name] = self._replace_worker(name, left.pop(("primary", name), None))
        if not self.stopping():
            self.supervisor.start("watchdog:watchdog")
            outcome.steps["watchdog"] = "started"
        for orphan in left.values():  # none expected: a program this config does not have
            self._retire(orphan)
        outcome.seconds = round(time.monotonic() - started, 2)
        return outcome

    def _retire(self, orphan: Orphan) -> None:
        killed = stop_gracefully([orphan.process], self.stop_wait_s)
        self.log(
            "takeover_stopped_old",
            program=orphan.name,
            pid=orphan.process.pid,
            killed=bool(killed),
        )

    def _start_supervisord(self) -> subprocess.Popen[bytes] | None:
        conf = RunDir(self.settings).supervisord_conf
        write_private(conf, sv.render_supervisord_conf(self.settings, autostart=False))
        RunDir(self.settings).supervisor_socket.unlink(missing_ok=True)  # the dead one's
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)])
        deadline = time.monotonic() + SUPERVISORD_START_S
        while time.monotonic() < deadline and proc.poll() is None and not self.stopping():
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                if sv.rpc(self.settings, timeout=1.0).supervisor.getState()["statename"] == (
                    "RUNNING"
                ):
                    return proc
            self.stop.wait(0.1)
        self.log(
            "takeover_failed",
            reason=f"the new supervisord did not answer within {SUPERVISORD_START_S:.0f} s "
            f"(exit code {proc.poll()})",
            fix=f"read {RunDir(self.settings).log('supervisord')}",
        )
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        return None

    def _replace_gateway(self, name: str, old: Orphan | None) -> str:
        self.supervisor.start(f"gateway:{name}")
        pid = self._gateway_serving(name)
        if pid is None:
            self.log("takeover_step", program=name, outcome="not_serving", kept_old=bool(old))
            return "not_serving"  # the old one (if any) goes on accepting
        if old is not None:
            self._retire(old)
        self.log("takeover_step", program=name, pid=pid, outcome="replaced")
        return "replaced"

    def _gateway_serving(self, name: str) -> int | None:
        """The new process's pid once it answers on its control socket (it is then past
        loading its fallback and holds the listener), or None when it does not in time."""
        index = int(name.rsplit("_", 1)[1])
        client = ControlClient(self.settings, timeout=1.0)
        client.path = RunDir(self.settings).control_socket_for(index)
        deadline = time.monotonic() + GATEWAY_START_S
        while time.monotonic() < deadline and not self.stopping():
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                pid = self.supervisor.info(f"gateway:{name}").pid
                status, body = client.request("GET", "/control/local")
                if pid and status == 200 and body.get("gateway", {}).get("pid") == pid:
                    return int(pid)
            self.stop.wait(0.1)
        return None

    def _body(self, drain: bool, pid: int | None) -> dict[str, Any]:
        return {
            "drain": drain,
            "state": "restarting" if drain else "ready",
            "reason": "supervisord_replaced",
            "pid": pid,
        }

    def _replace_worker(self, name: str, old: Orphan | None) -> str:
        if old is not None:
            pid = old.process.pid
            self.gateway.drain_and_wait(
                name,
                lambda: self._body(True, pid),
                self.settings.watchdog.drain_timeout_s,
                self.stop,
            )
            self._retire(old)
        timeout = self.settings.watchdog.start_timeout_s * START_CAP_FACTOR
        result = self.recycler.start_and_wait(name, timeout)
        if result.ready:
            self.gateway.put_worker(name, self._body(False, result.pid))
        self.log(
            "takeover_step",
            program=name,
            pid=result.pid,
            outcome=result.why,
            waited_s=result.waited_s,
        )
        return result.why

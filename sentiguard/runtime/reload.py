"""`sentiguard reload [--model DIR|ID]`: move the workers to a new model, one at a time.

Files in `<run_dir>`:

- `primary_model`: one line, the model directory (absolute) or hub id. A worker reads it
  at start when it exists, overriding `primary.model`, so every later restart (by the
  watchdog too) keeps the new model.
- `reload.lock`: JSON `{"pid", "model", "worker", "drain"}` while a reload runs. The
  watchdog recycles nothing while it exists, leaves `worker` to us, and reports that
  worker's `drain` as the lock says. A lock whose pid is dead is stale and ignored.
  It is taken atomically (`take_reload_lock`): of two reloads started at once, exactly
  one runs; updates replace it whole (`write_reload_lock`).

For each worker, never two at once: wait until the other workers are ready and every
gateway process routes to them (so someone serves while this one is down: each gateway
process learns readiness from its own poller, `drain.GatewayLink.wait_routable`), drain it
at every gateway, wait for its in-flight requests, stop and start it through supervisord,
wait until `/ready` passes from the new process (with the same model_version as the first
reloaded worker) and every gateway process sees it ready, undrain. A worker that passes
`/ready` but that a gateway does not route to in time stops the reload before the next
worker is taken away (that gateway would have only the fallback). If a worker dies on
the new model, the previous model is restored and that worker restarted on it; if
it is still loading when the wait ends, it is left loading (killing it would only start
the slow load again). Either way the reload stops and the remaining workers keep serving
the old model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from sentiguard.errors import ExitCode
from sentiguard.logs import EventLog
from sentiguard.runtime.drain import ROUTABLE_TIMEOUT_S, GatewayLink
from sentiguard.runtime.endpoints import probe_ready, worker_port
from sentiguard.runtime.paths import RunDir, write_atomic
from sentiguard.runtime.recycle import START_CAP_FACTOR, Recycler, StartOutcome
from sentiguard.runtime.supervisor_client import SupervisorClient, SupervisorUnavailable
from sentiguard.settings import ROOT, Settings


@dataclass(frozen=True)
class ReloadLock:
    pid: int
    model: str
    worker: str | None = None
    drain: bool = False


def _parse_lock(path: Path) -> ReloadLock | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ReloadLock(
            pid=int(data["pid"]),
            model=str(data.get("model", "")),
            worker=data.get("worker"),
            drain=bool(data.get("drain", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_reload_lock(settings: Settings) -> ReloadLock | None:
    """The reload in progress, or None (no lock, unreadable, or its process is gone)."""
    lock = _parse_lock(RunDir(settings).reload_lock)
    return lock if lock is not None and psutil.pid_exists(lock.pid) else None


def write_reload_lock(settings: Settings, lock: ReloadLock) -> None:
    """Update the lock this reload holds (replaced whole: a reader never sees half)."""
    write_atomic(RunDir(settings).reload_lock, json.dumps(lock.__dict__))


def take_reload_lock(settings: Settings, lock: ReloadLock) -> ReloadLock | None:
    """Create `reload.lock` holding `lock` unless a live reload holds it. None when taken,
    else the holder. Atomic: of any number of racing callers, exactly one gets it.

    The file is written complete under a temporary name, then hard-linked to the lock's
    name: `link` fails when the name exists, like `open(O_CREAT | O_EXCL)`, but publishes
    the whole content at once (an O_EXCL file is empty until written: a racer reading it
    then would take it for a stale lock). A lock whose pid is dead (or that cannot be read)
    is removed and the take tried once more; takers do this under an exclusive flock of the
    run directory, so one cannot remove the fresh lock another just took after both found
    the old one stale (flock ends with its process: the guard itself never goes stale).
    """
    path = RunDir(settings).reload_lock
    path.parent.mkdir(parents=True, exist_ok=True)
    holder: ReloadLock | None = None
    guard = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)  # held for microseconds: no reload waits long
        for attempt in range(2):
            if _create_exclusive(path, json.dumps(lock.__dict__)):
                return None
            holder = _parse_lock(path)
            if holder is not None and psutil.pid_exists(holder.pid):
                return holder
            if attempt == 0:
                path.unlink(missing_ok=True)  # stale; no other taker runs meanwhile
    finally:
        os.close(guard)  # releases the flock
    return holder if holder is not None else ReloadLock(pid=0, model="")


def _create_exclusive(path: Path, text: str) -> bool:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def resolve_model(model: str) -> str:
    """An existing directory (relative to here or to the project) becomes absolute; anything
    else is taken as a hub id."""
    for base in (Path.cwd(), ROOT):
        candidate = (base / model).expanduser()
        if candidate.is_dir():
            return str(candidate.resolve())
    return model


def _say(message: str) -> None:
    print(message, flush=True)


class Reload:
    """One reload run; see the module docstring for the procedure."""

    def __init__(self, settings: Settings, model: str, log: EventLog) -> None:
        self.settings = settings
        self.model = model
        self.log = log
        self.stop = threading.Event()
        self.supervisor = SupervisorClient(settings)
        self.gateway = GatewayLink(settings, log)
        self.recycler = Recycler(settings, self.supervisor, self.stop, gateway=self.gateway)
        # An operator is watching and a slow load is not a failure: wait as long as the
        # watchdog lets a start that is still making progress run.
        self.start_timeout_s = settings.watchdog.start_timeout_s * START_CAP_FACTOR
        self.drain_timeout_s = settings.watchdog.drain_timeout_s
        # Two watchdog rounds (each within an interval, twice as often when probing) and
        # room for a slow one.
        self.catch_up_s = 4 * settings.watchdog.interval_s + 2.0
        self.version: str | None = None
        self.lock_changed_at: float | None = None

    def lock(self, worker: str | None, drain: bool) -> None:
        write_reload_lock(self.settings, ReloadLock(os.getpid(), self.model, worker, drain))
        self.lock_changed_at = time.monotonic()

    def watchdog_caught_up(self) -> None:
        """Wait until no watchdog report built from the lock before its last change can
        still arrive (it would undo our last drain or undrain at the gateways)."""
        if self.lock_changed_at is not None:
            self.gateway.wait_watchdog_caught_up(self.lock_changed_at, self.stop, self.catch_up_s)

    def body(self, name: str, drain: bool, pid: int | None) -> dict[str, Any]:
        # Only what reload knows; the gateway keeps the watchdog's memory and restarts.
        return {
            "drain": drain,
            "state": "reloading" if drain else "ready",
            "reason": "reload",
            "pid": pid,
        }

    def wait_others_ready(self, name: str, names: list[str]) -> list[str]:
        """Wait until every other worker answers /ready; returns those that never did."""
        deadline = time.monotonic() + self.start_timeout_s
        waiting = [n for n in names if n != name]
        while waiting and time.monotonic() < deadline:
            waiting = [
                n for n in waiting if not probe_ready(worker_port(self.settings, n), 0.5).ready
            ]
            if waiting:
                time.sleep(0.2)
        return waiting

    def wait_others_routed(self, name: str, names: list[str]) -> list[str]:
        """Wait until every gateway routes to the other workers (ready, undrained, breaker
        not open); returns what each gateway that did not said."""
        deadline = time.monotonic() + ROUTABLE_TIMEOUT_S
        waiting: list[str] = []
        for other in (n for n in names if n != name):
            left = max(0.0, deadline - time.monotonic())
            routed = self.gateway.wait_routable(other, None, self.stop, left, undrained=True)
            waiting += [f"{other} at {gateway}" for gateway in routed.waiting]
        return waiting

    def one(self, name: str, index: int, names: list[str]) -> StartOutcome:
        step = f"[{index}/{len(names)}] {name}"
        missing = self.wait_others_ready(name, names)
        if missing:
            _say(
                f"{step}: {', '.join(missing)} not ready after {self.start_timeout_s:.0f}s; "
                f"going on (the fallback answers while {name} restarts)"
            )
        else:
            self.watchdog_caught_up()
            unrouted = self.wait_others_routed(name, names)
            if unrouted:
                _say(
                    f"{step}: not routed after {ROUTABLE_TIMEOUT_S:.1f}s: "
                    f"{'; '.join(unrouted)}; going on (the fallback answers there while "
                    f"{name} restarts)"
                )
        old = self.supervisor.info(name)
        old_version = probe_ready(worker_port(self.settings, name), 1.0).model_version
        self.lock(name, drain=True)
        in_flight, waited = self.gateway.drain_and_wait(
            name, lambda: self.body(name, True, old.pid), self.drain_timeout_s, self.stop
        )
        # A watchdog report built before the lock said so may undrain it again: once it
        # cannot any more, drain again and wait for what it let through.
        self.watchdog_caught_up()
        in_flight, again = self.gateway.drain_and_wait(
            name, lambda: self.body(name, True, old.pid), self.drain_timeout_s, self.stop
        )
        waited = round(waited + again, 2)
        gateway = "gateway away" if in_flight is None else f"{in_flight} in flight"
        _say(f"{step}: drained in {waited:.1f}s ({gateway}); restarting pid {old.pid}")
        self.recycler.take_down(name, old.pid, hung=False)
        outcome = self.recycler.start_and_wait(name, self.start_timeout_s, self.version)
        self.log(
            "reload_step",
            worker=name,
            pid=outcome.pid,
            reason="reload",
            model=self.model,
            model_version=outcome.model_version,
            outcome=outcome.why,
            waited_s=outcome.waited_s,
            # How the gateways' routing was confirmed: "views", "lag", "no_gateway".
            routed=None if outcome.routed is None else outcome.routed.how,
            unrouted=None if outcome.routed is None else list(outcome.routed.waiting),
            action="undrain" if outcome.ready else "abort",
        )
        if not outcome.ready:
            _say(
                f"{step}: not ready ({outcome.why}, exit status {outcome.exitstatus}) after "
                f"{outcome.waited_s:.1f}s on {self.model}"
            )
            return outcome
        self.version = self.version or outcome.model_version
        self.lock(name, drain=False)
        self.gateway.put_worker(name, self.body(name, False, outcome.pid))
        same = " (unchanged: is that the model you meant?)" if old_version == self.version else ""
        _say(
            f"{step}: ready in {outcome.waited_s:.1f}s, pid {outcome.pid}, "
            f"model_version {old_version} -> {outcome.model_version}{same}"
        )
        routed = outcome.routed
        if routed is not None and not routed.ok:
            _say(
                f"{step}: the gateway does not route to {name} after {routed.waited_s:.1f}s: "
                f"{'; '.join(routed.waiting)}"
            )
            return replace(outcome, why="unrouted")
        return outcome

    def run(self) -> int:
        names = sorted(self.supervisor.processes())
        if not names:
            _say("reload: supervisord runs no primary workers. Hint: check `sentiguard status`.")
            return ExitCode.ERROR
        path = RunDir(self.settings).reload_model
        previous = path.read_text(encoding="utf-8") if path.exists() else None
        write_atomic(path, self.model + "\n")
        _say(f"reload: {len(names)} workers to {self.model}, one at a time")
        for index, name in enumerate(names, start=1):
            outcome = self.one(name, index, names)
            if outcome.ready:
                continue
            later = ", ".join(names[index:]) or "none"
            if outcome.why == "unrouted":
                if index == len(names):
                    continue  # nothing more is taken away: it serves where it is routed
                # Taking the next worker away now would leave that gateway process only
                # the fallback. The worker serves the new model; the others the old one.
                _say(
                    f"reload: stopped; {name} serves {self.model}, but not every gateway "
                    f"process routes to it. Not moved: {later}. Hint: check `sentiguard "
                    f"status` (breaker, ready) and the gateway's log (gateway_I.log in the "
                    f"log directory), then run the same `sentiguard reload` again."
                )
                return ExitCode.ERROR
            if outcome.why == "timeout":
                # Alive and still loading the new model: killing it would only start the
                # slow load again. The watchdog takes it over when the lock goes.
                _say(
                    f"reload: stopped; {name} is still loading {self.model} and stays with "
                    f"the watchdog. Not moved: {later}. Hint: when `sentiguard status` shows "
                    f"it ready, run the same `sentiguard reload` again."
                )
                return ExitCode.ERROR
            # It died on the new model: put the previous one back and start it on that.
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, previous)
            _say(
                f"reload: stopped; {name} died on {self.model} (exit status "
                f"{outcome.exitstatus}) and restarts on the previous model. Not moved: "
                f"{later}. Hint: check the model with `sentiguard doctor` and the worker's "
                f"log ({name}.log in the log directory)."
            )
            with contextlib.suppress(SupervisorUnavailable):
                self.recycler.take_down(name, 0, hung=False)
                self.supervisor.start(name)
            return ExitCode.ERROR
        self.watchdog_caught_up()  # its reports say what we did before `up` sees us gone
        _say(f"reload: done, every worker serves model_version {self.version}")
        return ExitCode.OK


def reload(settings: Settings, model: str | None = None) -> int:
    """Move every worker to `model` (default: primary.model) one at a time; an exit code."""
    target = resolve_model(model or settings.primary.model)
    live = take_reload_lock(settings, ReloadLock(os.getpid(), target))
    if live is not None:
        _say(
            f"reload: another reload (pid {live.pid}) is running. Hint: wait for it, or "
            f"remove {RunDir(settings).reload_lock} if that process is gone."
        )
        return ExitCode.ERROR
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        try:
            # Decisions go to the watchdog's log; the terminal gets the progress lines.
            log = EventLog.rotating(RunDir(settings).watchdog_log, settings, stream=quiet)
            job = Reload(settings, target, log)
            return job.run()
        except SupervisorUnavailable as e:
            _say(f"reload: {e}")
            return ExitCode.ERROR
        finally:
            RunDir(settings).reload_lock.unlink(missing_ok=True)

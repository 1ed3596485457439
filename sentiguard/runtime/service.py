"""`sentiguard up` and `down`: start the service in the foreground, stop it from elsewhere.

`up` checks that nothing else holds the ports or the run directory, writes a fresh control
secret and `<run_dir>/supervisord.conf`, binds the public listening socket and holds it for
its whole life (`runtime.listener`: each gateway process gets it over
`<run_dir>/listener.sock`, so the socket and its backlog outlive any gateway process), then
runs the real supervisord as its child in the foreground, and records where it serves in
`<run_dir>/service.json` (`runtime.locate`) until it stops. `up` is a small process of its
own (the gunicorn arbiter pattern): signal handlers only set a flag; the loop does the rest.

The stop (a signal to `up`, or `sentiguard down`, which sends `up` SIGTERM): close the
listener everywhere first (new connections are refused; the gateway processes drain what
they accepted; a socket systemd passed in is left listening, so connections wait in its
backlog for the next `up`), then one SIGTERM to supervisord, which stops the watchdog, the
workers and the gateway processes in turn; when the graceful timeout passes, kill what is
left. `up` is a Linux child subreaper, so a program orphaned by a supervisord that died
reparents to `up`: no orphans.

Programs that keep failing (`runtime.escalation`): a FATAL gateway process or watchdog is
started again with a capped backoff and reported in `<run_dir>/programs.json`; `up` stops
everything and exits `ExitCode.PROGRAM_FATAL` (69) only when the service cannot answer (no
gateway process can stay up) or the watchdog stayed down for
`service.watchdog_down_limit_s`. A supervisord that dies is replaced while the service
answers (`runtime.takeover`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import Any

import psutil

from sentiguard.errors import ExitCode, ServiceError
from sentiguard.logs import format_event
from sentiguard.runtime import control, listener
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.endpoints import WORKER_HOST, gateway_get_json, gateway_url, workers
from sentiguard.runtime.escalation import Decision, Escalation, Verdict
from sentiguard.runtime.locate import announce, remove_record, write_record
from sentiguard.runtime.memory import kill_tree, stop_gracefully
from sentiguard.runtime.net import describe_holder, port_free, unix_socket_live
from sentiguard.runtime.paths import RunDir, write_atomic, write_private
from sentiguard.runtime.takeover import Takeover
from sentiguard.settings import Settings

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
POLL_S = 0.5
# supervisord deaths `up` survives within the window; one more stops the service (exit 1):
# something kills it on purpose, or it cannot run here.
TAKEOVERS = 3
TAKEOVER_WINDOW_S = 600.0


# --- preflight ------------------------------------------------------------------------


def preflight(settings: Settings) -> None:
    """Refuse to start over a live instance or a taken port; clear stale sockets.

    Raises ServiceError naming the conflict and the fix.
    """
    run = RunDir(settings).root
    sock = RunDir(settings).supervisor_socket
    if unix_socket_live(sock):
        raise ServiceError(
            f"another sentiguard is already running from {run} (supervisord answers on "
            f"{sock}). Hint: stop it with `sentiguard down`, see it with `sentiguard status`, "
            f"or start this one with another service.run_dir."
        )
    # Left behind by a supervisord, gateway or `up` that was killed: nobody answers on them.
    here = RunDir(settings)
    for stale in (sock, here.listener_socket, *here.control_sockets(settings.gateway.processes)):
        if stale.exists() and not unix_socket_live(stale):
            stale.unlink()
    host, port = settings.gateway.host, settings.gateway.port
    if not listener.socket_activated() and not _port_free(host, port):
        raise ServiceError(
            f"port {port} on {host} is already in use{describe_holder(port)}. Hint: stop that "
            f"process, or choose another port with `sentiguard up --port P` "
            f"(or SENTIGUARD_GATEWAY_PORT)."
        )
    for worker in workers(settings):
        if not _port_free(WORKER_HOST, worker.port):
            raise ServiceError(
                f"worker port {worker.port} on {WORKER_HOST} ({worker.name} = "
                f"primary.base_port + {worker.index}) is already in use"
                f"{describe_holder(worker.port)}. Hint: stop that process, or move the "
                f"workers with SENTIGUARD_PRIMARY_BASE_PORT."
            )


def _port_free(host: str, port: int) -> bool:
    try:
        return port_free(host, port)
    except OSError as e:
        raise ServiceError(
            f"cannot bind {host}:{port}: {e}. Hint: check gateway.host is an address of "
            f"this machine."
        ) from e


# --- up -------------------------------------------------------------------------------


def _become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _say(event: str, **fields: Any) -> None:
    # supervisord logs to this same terminal; our lines use the shared JSON format.
    print(format_event(event, **fields), file=sys.stderr, flush=True)


class Runner:
    """Runs supervisord in the foreground and owns the shutdown deadline."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.graceful_s = float(settings.service.graceful_timeout_s)
        self.stop_signal: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.listeners: list[socket.socket] = []
        self.escalation = Escalation(settings)
        self.verdict: Verdict | None = None
        self.problems: list[str] = []
        self.takeovers: list[float] = []

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the loop forwards it and logs, outside the signal handler.
        self.stop_signal = signum

    def run(self) -> int:
        previous = {
            s: signal.signal(s, self.on_signal)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        handoff: listener.Handoff | None = None
        try:
            try:
                self.listeners = listener.bind_public(self.settings)
            except OSError as e:
                g = self.settings.gateway
                fix = None if isinstance(e, listener.ActivationError) else _PORT_FIX
                _say("listen_failed", host=g.host, port=g.port, reason=str(e), fix=fix)
                return ExitCode.ERROR
            handoff = listener.Handoff(self.settings, self.listeners, _say)
            handoff.start()
            conf = RunDir(self.settings).supervisord_conf
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)]
            )
            write_record(self.settings, self.proc.pid)
            return self._loop()
        finally:
            remove_record(self.settings)
            RunDir(self.settings).programs_report.unlink(missing_ok=True)
            if handoff is not None:
                handoff.stop()
            for sock in self.listeners:
                sock.close()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _begin_stop(self) -> float:
        """Close the listener for every gateway process, then SIGTERM supervisord; returns
        the deadline after which everything left is killed."""
        _say("listener_closed", action=listener.close_everywhere(self.listeners))
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return time.monotonic() + self.graceful_s

    def _loop(self) -> int:
        deadline: float | None = None
        announced = False
        while True:
            assert self.proc is not None
            try:
                code = self.proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                if deadline is None and self._take_over(code):
                    continue
                break
            if self.stop_signal is not None and deadline is None:
                _say(
                    "stopping",
                    signal=signal.Signals(self.stop_signal).name,
                    graceful_timeout_s=self.graceful_s,
                )
                deadline = self._begin_stop()
            elif deadline is not None and time.monotonic() > deadline:
                _say("stop_timeout", action="kill", graceful_timeout_s=self.graceful_s)
                kill_tree(self.proc.pid)
                code = self.proc.wait()
                break
            if deadline is None:
                announced = announced or self._announce_ready()
                decision = self.escalation.check()
                if decision is not None:
                    self._act(decision)
                if self.verdict is not None:
                    deadline = self._begin_stop()
        self._reap_orphans(deadline)
        if self.verdict is not None:
            _say("stopped", exit_code=int(ExitCode.PROGRAM_FATAL), cause=self.verdict.reason)
            return ExitCode.PROGRAM_FATAL
        if self.stop_signal is not None or code == 0:
            _say("stopped", exit_code=code)
            return ExitCode.OK
        _say(
            "supervisord_exited",
            exit_code=code,
            fix=f"read {RunDir(self.settings).log('supervisord')}",
        )
        return ExitCode.ERROR

    def _act(self, decision: Decision) -> None:
        """Log what the keeper decided and publish its report for the gateway."""
        keeper = self.escalation.keeper
        now = self.escalation.clock()
        for name in decision.start:
            program = keeper.programs[name]
            _say(
                "program_restart",
                program=name,
                restarts_by_up=program.restarts_by_up,
                next_backoff_s=program.backoff_s(),
                action=f"start {name} again (supervisord gave it up: FATAL)",
                fix=f"read {program.log or RunDir(self.settings).logs} for why it fails",
            )
        report = keeper.report(now)
        if report["problems"] != self.problems:
            if report["problems"]:
                _say("program_problems", problems=report["problems"])
            elif self.problems:
                _say("program_problems_cleared")
            self.problems = report["problems"]
        with contextlib.suppress(OSError):
            write_atomic(RunDir(self.settings).programs_report, json.dumps(report))
        if decision.verdict is not None:
            self.verdict = decision.verdict
            self._escalate(decision.verdict)

    def _take_over(self, code: int) -> bool:
        """supervisord died while nobody asked it to stop: replace it and its programs
        (`runtime.takeover`) while they serve. False when `up` should stop instead."""
        now = time.monotonic()
        self.takeovers = [t for t in self.takeovers if t > now - TAKEOVER_WINDOW_S]
        if len(self.takeovers) >= TAKEOVERS:
            _say(
                "supervisord_died",
                exit_code=code,
                action=f"stop: supervisord died {len(self.takeovers) + 1} times within "
                f"{TAKEOVER_WINDOW_S:.0f} s",
                fix=f"read {RunDir(self.settings).log('supervisord')} and the kernel log",
            )
            return False
        self.takeovers.append(now)
        _say(
            "supervisord_died",
            exit_code=code,
            action="start a new supervisord and replace each program once its successor serves",
        )
        stop = threading.Event()
        takeover = Takeover(self.settings, _say, stop)
        thread = threading.Thread(target=takeover.run, name="takeover", daemon=True)
        thread.start()
        while thread.is_alive():
            if self.stop_signal is not None:
                stop.set()  # from the loop, not the signal handler
            thread.join(POLL_S)
        outcome = takeover.outcome
        if outcome.proc is None:
            return False
        self.proc = outcome.proc
        write_record(self.settings, self.proc.pid)
        _say(
            "supervisord_replaced",
            pid=self.proc.pid,
            seconds=outcome.seconds,
            programs=outcome.steps,
            check=f"supervisorctl -c {RunDir(self.settings).supervisord_conf} status",
        )
        return True

    def _escalate(self, verdict: Verdict) -> None:
        _say(
            "escalate",
            program=verdict.program,
            state=verdict.state,
            reason=verdict.reason,
            exitstatus=verdict.exitstatus,
            log=verdict.log,
            log_tail=verdict.tail,
            action=f"stop everything, exit {int(ExitCode.PROGRAM_FATAL)} (the service "
            f"manager restarts the whole service)",
            fix=f"read {verdict.log or RunDir(self.settings).logs} for why {verdict.program} "
            f"cannot run; `sentiguard doctor` checks models, ports and settings",
        )

    def _announce_ready(self) -> bool:
        try:
            status, body = gateway_get_json(self.settings, "/ready", timeout_s=0.3)
        except (OSError, ValueError):
            return False
        if status != 200:
            return False
        _say("ready", url=gateway_url(self.settings, "/"), body=body)
        return True

    def _reap_orphans(self, deadline: float | None) -> None:
        """Stop any program left behind by supervisord (reparented to us, the subreaper)."""
        left = psutil.Process().children(recursive=True)
        if not left:
            return
        _say("orphans", pids=[p.pid for p in left], action="terminate")
        end = min(deadline or float("inf"), time.monotonic() + self.graceful_s)
        stop_gracefully(left, end - time.monotonic())


_PORT_FIX = (
    "stop the process holding it, or choose another port with `sentiguard up --port P` "
    "(or SENTIGUARD_GATEWAY_PORT)"
)


def _gone(p: psutil.Process) -> bool:
    """Exited: no such process, or a zombie its parent has not reaped yet (`up`'s parent
    is the shell or service manager, not us)."""
    try:
        return bool(p.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def up(settings: Settings) -> int:
    """Start the service in the foreground; returns when it has stopped (0 after a signal)."""
    try:
        preflight(settings)
    except ServiceError as e:
        print(f"sentiguard: {e}", file=sys.stderr)
        return ExitCode.ERROR
    run, logs = RunDir(settings).root, RunDir(settings).logs
    run.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    os.chmod(run, 0o700)
    # A model chosen by `sentiguard reload` lasts until the next `up`, which serves the
    # configured one again; a reload cut short by the last stop leaves nothing behind.
    for leftover in (RunDir(settings).reload_model, RunDir(settings).reload_lock):
        leftover.unlink(missing_ok=True)
    # The gateway processes' counters start from zero with each `up`.
    metrics = RunDir(settings).metrics_dir
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(mode=0o700)
    control.new_secret(settings)
    write_private(RunDir(settings).supervisord_conf, sv.render_supervisord_conf(settings))
    _become_subreaper()
    _say(
        "starting",
        url=gateway_url(settings, "/"),
        workers=settings.primary.workers,
        gateway_processes=settings.gateway.processes,
        config=str(RunDir(settings).supervisord_conf),
        logs=str(logs),
        stop="Ctrl-C or `sentiguard down`",
    )
    return Runner(settings).run()


# --- down -----------------------------------------------------------------------------


def not_running(settings: Settings) -> str:
    return (
        f"sentiguard is not running (no supervisord on {RunDir(settings).supervisor_socket}). "
        f"Hint: start it with `sentiguard up`; if it runs with another config, pass the "
        f"same --config here."
    )


def down(settings: Settings) -> int:
    """Stop the service and wait until every program and the `up` that ran it are gone.

    The stop goes through `up` (SIGTERM, like Ctrl-C or systemd), which closes the public
    listener for every gateway process before it stops supervisord; without a live `up`
    (killed), supervisord is asked to shut down over its socket.
    """
    target = announce(settings)
    proxy = sv.rpc(settings)
    try:
        pid = int(proxy.supervisor.getPID())
        pids = [int(i["pid"]) for i in proxy.supervisor.getAllProcessInfo() if i["pid"]]
        if target.record is not None and target.record.supervisord_pid == pid:
            os.kill(target.record.pid, signal.SIGTERM)
        else:
            proxy.supervisor.shutdown()
    except OSError:
        print(f"sentiguard: {not_running(settings)}", file=sys.stderr)
        return ExitCode.ERROR
    started = time.monotonic()
    watched = []
    up_pid = [target.record.pid] if target.record is not None else []
    for p in (pid, *pids, *up_pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            watched.append(psutil.Process(p))
    # supervisord stops each group within its stopwaitsecs; give it the graceful timeout
    # plus a margin, then kill what is left so `down` never leaves orphans behind.
    timeout = float(settings.service.graceful_timeout_s) + 2.0
    end = time.monotonic() + timeout
    while time.monotonic() < end and not all(_gone(p) for p in watched):
        time.sleep(0.1)
    alive = [p for p in watched if not _gone(p)]
    # `up` exits by itself once supervisord has; it is waited for, never killed.
    alive = [p for p in alive if p.pid not in up_pid]
    if alive:
        print(
            f"sentiguard: {len(alive)} process(es) did not stop within {timeout:.0f} s; "
            f"killing pids {[p.pid for p in alive]}.",
            file=sys.stderr,
        )
        stop_gracefully(alive, 0.0)
    print(f"sentiguard: stopped in {time.monotonic() - started:.1f} s")
    return ExitCode.OK

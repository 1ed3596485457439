"""`sentiguard up`, `down`, `status` and `reload`: the service as an operator runs it.

`up` checks that nothing else holds the ports or the run directory, writes a fresh control
secret and `<run_dir>/supervisord.conf`, then runs the real supervisord as its child in the
foreground. `up` is a small process of its own (the gunicorn arbiter pattern): signal
handlers only set a flag; the loop forwards one SIGTERM to supervisord and, when the graceful
timeout passes, kills what is left. It is a Linux child subreaper, so a program orphaned by
a supervisord that died reparents to `up` and is killed with the rest: no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from sentiguard.errors import ExitCode, SentiguardError
from sentiguard.logs import format_event
from sentiguard.runtime import control
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
POLL_S = 0.5


class ServiceError(SentiguardError):
    """`up` cannot start, or `down`/`status` cannot reach the service; the message says why."""


# --- preflight ------------------------------------------------------------------------


def unix_socket_live(path: Path) -> bool:
    """True when something accepts connections on the unix socket at `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def port_free(host: str, port: int) -> bool:
    """True when `host:port` can be bound the way the servers bind it (SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise ServiceError(
            f"cannot bind {host}:{port}: {e}. Hint: check gateway.host is an address of "
            f"this machine."
        ) from e
    finally:
        sock.close()
    return True


def _holder(port: int) -> str:
    """' (held by pid N, NAME)' when this user may see who listens on `port`, else ''."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN
            if conn.laddr and conn.laddr.port == port and listening and conn.pid:
                return f" (held by pid {conn.pid}, {psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


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
    # Left behind by a supervisord or gateway that was killed: nobody answers on them.
    for stale in (sock, RunDir(settings).control_socket):
        if stale.exists() and not unix_socket_live(stale):
            stale.unlink()
    host, port = settings.gateway.host, settings.gateway.port
    if not port_free(host, port):
        raise ServiceError(
            f"port {port} on {host} is already in use{_holder(port)}. Hint: stop that "
            f"process, or choose another port with `sentiguard up --port P` "
            f"(or SENTIGUARD_GATEWAY_PORT)."
        )
    base, workers = settings.primary.base_port, settings.primary.workers
    for index in range(workers):
        if not port_free("127.0.0.1", base + index):
            raise ServiceError(
                f"worker port {base + index} on 127.0.0.1 (primary_{index} = primary.base_port "
                f"+ {index}) is already in use{_holder(base + index)}. Hint: stop that "
                f"process, or move the workers with SENTIGUARD_PRIMARY_BASE_PORT."
            )


# --- up -------------------------------------------------------------------------------


def _become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _say(event: str, **fields: Any) -> None:
    # supervisord logs to this same terminal; our lines use the shared JSON format.
    print(format_event(event, **fields), file=sys.stderr, flush=True)


def _gateway_host(settings: Settings) -> str:
    """Where a local client reaches the gateway: loopback when it binds every address."""
    host = settings.gateway.host
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _public_url(settings: Settings, path: str) -> str:
    host = _gateway_host(settings)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.gateway.port}{path}"


def _get_json(settings: Settings, path: str, timeout: float) -> tuple[int, Any]:
    """GET a gateway path; returns (status, JSON body or None). OSError when nothing answers.

    Plain http.client, not urllib: urllib would route 127.0.0.1 through an http_proxy
    set in the operator's environment.
    """
    headers = {}
    key = settings.gateway.api_key
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection(
        _gateway_host(settings), settings.gateway.port, timeout=timeout
    )
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except http.client.HTTPException as e:
        raise OSError(f"bad HTTP answer from the gateway: {e!r}") from e
    finally:
        conn.close()
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, None


class Runner:
    """Runs supervisord in the foreground and owns the shutdown deadline."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.graceful_s = float(settings.service.graceful_timeout_s)
        self.stop_signal: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the loop forwards it and logs, outside the signal handler.
        self.stop_signal = signum

    def run(self) -> int:
        conf = RunDir(self.settings).supervisord_conf
        previous = {
            s: signal.signal(s, self.on_signal)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)]
            )
            return self._loop(self.proc)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _loop(self, proc: subprocess.Popen[bytes]) -> int:
        deadline: float | None = None
        announced = False
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stop_signal is not None and deadline is None:
                _say(
                    "stopping",
                    signal=signal.Signals(self.stop_signal).name,
                    graceful_timeout_s=self.graceful_s,
                )
                deadline = time.monotonic() + self.graceful_s
                proc.send_signal(signal.SIGTERM)
            elif deadline is not None and time.monotonic() > deadline:
                _say("stop_timeout", action="kill", graceful_timeout_s=self.graceful_s)
                self._kill_tree(proc.pid)
                code = proc.wait()
                break
            if not announced and deadline is None:
                announced = self._announce_ready()
        self._reap_orphans(deadline)
        if self.stop_signal is not None or code == 0:
            _say("stopped", exit_code=code)
            return ExitCode.OK
        _say(
            "supervisord_exited",
            exit_code=code,
            fix=f"read {RunDir(self.settings).log('supervisord')}",
        )
        return ExitCode.ERROR

    def _announce_ready(self) -> bool:
        try:
            status, body = _get_json(self.settings, "/ready", timeout=0.3)
        except (OSError, ValueError):
            return False
        if status != 200:
            return False
        _say("ready", url=_public_url(self.settings, "/"), body=body)
        return True

    def _kill_tree(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            victims = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            victims = []
        _kill(victims)

    def _reap_orphans(self, deadline: float | None) -> None:
        """Stop any program left behind by supervisord (reparented to us, the subreaper)."""
        left = psutil.Process().children(recursive=True)
        if not left:
            return
        _say("orphans", pids=[p.pid for p in left], action="terminate")
        for p in left:
            _signal_group(p.pid, signal.SIGTERM)
        end = min(deadline or float("inf"), time.monotonic() + self.graceful_s)
        _, alive = psutil.wait_procs(left, timeout=max(0.1, end - time.monotonic()))
        _kill(alive)


def _signal_group(pid: int, signum: int) -> None:
    # Every program leads its own process group; signal the group, then the pid.
    for send in (lambda: os.killpg(pid, signum), lambda: os.kill(pid, signum)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send()


def _kill(processes: Iterable[psutil.Process]) -> None:
    procs = list(processes)
    for p in procs:
        _signal_group(p.pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=5)


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
    control.new_secret(settings)
    _write_private(RunDir(settings).supervisord_conf, sv.render_supervisord_conf(settings))
    _become_subreaper()
    _say(
        "starting",
        url=_public_url(settings, "/"),
        workers=settings.primary.workers,
        config=str(RunDir(settings).supervisord_conf),
        logs=str(logs),
        stop="Ctrl-C or `sentiguard down`",
    )
    return Runner(settings).run()


# --- down -----------------------------------------------------------------------------


def _not_running(settings: Settings) -> str:
    return (
        f"sentiguard is not running (no supervisord on {RunDir(settings).supervisor_socket}). "
        f"Hint: start it with `sentiguard up`; if it runs with another config, pass the "
        f"same --config here."
    )


def down(settings: Settings) -> int:
    """Ask supervisord to shut down over its socket and wait until every program is gone."""
    proxy = sv.rpc(settings)
    try:
        pid = int(proxy.supervisor.getPID())
        pids = [int(i["pid"]) for i in proxy.supervisor.getAllProcessInfo() if i["pid"]]
        proxy.supervisor.shutdown()
    except OSError:
        print(f"sentiguard: {_not_running(settings)}", file=sys.stderr)
        return ExitCode.ERROR
    started = time.monotonic()
    watched = []
    for p in (pid, *pids):
        with contextlib.suppress(psutil.NoSuchProcess):
            watched.append(psutil.Process(p))
    # supervisord stops each group within its stopwaitsecs; give it the graceful timeout
    # plus a margin, then kill what is left so `down` never leaves orphans behind.
    timeout = float(settings.service.graceful_timeout_s) + 2.0
    _, alive = psutil.wait_procs(watched, timeout=timeout)
    if alive:
        print(
            f"sentiguard: {len(alive)} process(es) did not stop within {timeout:.0f} s; "
            f"killing pids {[p.pid for p in alive]}.",
            file=sys.stderr,
        )
        _kill(alive)
    print(f"sentiguard: stopped in {time.monotonic() - started:.1f} s")
    return ExitCode.OK


# --- status ---------------------------------------------------------------------------


def last_decisions(path: Path, count: int = 5, tail_bytes: int = 65536) -> list[dict[str, Any]]:
    """The last `count` JSON lines of the watchdog's decision log (unparseable lines skipped)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            chunk = f.read()
    except FileNotFoundError:
        return []
    records = []
    for line in chunk.decode("utf-8", "replace").splitlines()[-count * 2 :]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records[-count:]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers), *(fmt.format(*r) for r in rows)]


def render_status(status: dict[str, Any], decisions: list[dict[str, Any]]) -> str:
    """The human-readable `sentiguard status` text for a gateway /status body."""
    columns = [
        "name",
        "pid",
        "port",
        "state",
        "ready",
        "rss_mb",
        "uss_mb",
        "restarts",
        "breaker",
        "in_flight",
        "reason",
    ]
    workers = status.get("workers") or []
    # Restarts read best as only the causes that happened.
    rows = [
        [
            _cell(
                {k: n for k, n in v.items() if n} if c == "restarts" and isinstance(v, dict) else v
            )
            for c in columns
            for v in [w.get(c)]
        ]
        for w in workers
    ]
    lines = ["workers", *("  " + r.rstrip() for r in _table(columns, rows))]
    for section in ("fallback", "watchdog"):
        # The decisions are shown below, from the watchdog's own log.
        info = {k: v for k, v in (status.get(section) or {}).items() if k != "decisions"}
        lines.append(
            f"{section}: " + ("  ".join(f"{k}={_cell(v)}" for k, v in info.items()) or "-")
        )
    lines.append(f"last watchdog decisions ({len(decisions)})")
    if not decisions:
        lines.append("  none yet")
    for d in decisions:
        known = ("ts", "event", "worker", "pid", "reason", "action")
        head = " ".join(_cell(d.get(k)) for k in known if k in d)
        rest = " ".join(f"{k}={_cell(v)}" for k, v in d.items() if k not in known)
        lines.append(f"  {head} {rest}".rstrip())
    return "\n".join(lines)


def _supervisor_states(settings: Settings) -> list[str] | None:
    """`name STATE pid` for each program when supervisord answers, else None."""
    try:
        infos = sv.rpc(settings, timeout=2.0).supervisor.getAllProcessInfo()
    except OSError:
        return None
    return [f"{i['group']}:{i['name']} {i['statename']} pid={i['pid'] or '-'}" for i in infos]


def status(settings: Settings, as_json: bool = False) -> int:
    """Print the gateway's /status (a table, or its JSON); non-zero when it does not answer."""
    url = _public_url(settings, "/status")
    try:
        code, body = _get_json(settings, "/status", timeout=2.0)
    except (OSError, ValueError) as e:
        states = _supervisor_states(settings)
        if states is None:
            print(f"sentiguard: {_not_running(settings)}", file=sys.stderr)
        else:
            print(
                f"sentiguard: supervisord is running but the gateway does not answer on {url} "
                f"({e}). Hint: read {RunDir(settings).log('gateway')}. Programs:\n  "
                + "\n  ".join(states),
                file=sys.stderr,
            )
        return ExitCode.ERROR
    if code != 200 or not isinstance(body, dict):
        print(f"sentiguard: {url} answered {code}: {body!r}", file=sys.stderr)
        return ExitCode.ERROR
    if as_json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return ExitCode.OK
    decisions = last_decisions(RunDir(settings).watchdog_log)
    print(render_status(body, decisions))
    return ExitCode.OK


# --- reload ---------------------------------------------------------------------------


def reload(settings: Settings, model: str | None = None) -> int:
    """Move the workers to `model` one at a time (the watchdog's reload does the work)."""
    from sentiguard.runtime.reload import reload as watchdog_reload

    return int(watchdog_reload(settings, model))

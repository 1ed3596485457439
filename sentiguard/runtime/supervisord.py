"""supervisord's side of sentiguard: the rendered config and an XML-RPC client.

`render_supervisord_conf(settings)` turns the resolved settings into the config that
`sentiguard up` hands to the real supervisord (the PyPI `supervisor` package, unchanged):

- the control interface is `[unix_http_server]` on `<run_dir>/supervisor.sock`, mode 0700,
  never `inet_http_server`: whoever can reach that socket can start and stop processes;
  it asks for the per-`up` credentials (`control.supervisor_credentials`), and the
  `[supervisorctl]` section carries them, so `supervisorctl -c <run_dir>/supervisord.conf`
  works as usual;
- programs `gateway` (numprocs = gateway.processes, process names `gateway_I`, each
  accepting on the socket `up` holds: `runtime.listener`), `primary` (numprocs =
  primary.workers, process names `primary_I`) and `watchdog`, each started as
  `<this python> -m <module>` so the pid supervisord reports is the serving process
  itself, with the resolved settings as `SENTIGUARD_*` variables so every child resolves
  the same values whatever its own environment says; the gateway processes also get
  `PROMETHEUS_MULTIPROC_DIR` (`<run_dir>/metrics`), where their counters add up;
- the workers run with `autorestart = false` and `startsecs = 0`: the watchdog owns their
  restarts (backoff, parking), and must see every exit and its code, including a fast exit
  with `ExitCode.MODEL_LOAD_ERROR` that supervisord would otherwise retry on its own;
- the gateway and the watchdog restart by themselves (`autorestart`), up to
  `START_RETRIES` failed starts in a row; then supervisord marks them FATAL and `up`
  escalates (`runtime.escalation`);
- on shutdown supervisord stops one group at a time (watchdog, then workers, then the
  gateway processes, all of a group at once), each waiting at most `stopwaitsecs` before
  SIGKILL to the process group, so the sum stays under `service.graceful_timeout_s`; a
  gateway process drains for at most `gateway_drain_s`, inside its `stopwaitsecs`.

`rpc(settings)` is an XML-RPC proxy over that socket with a timeout (supervisor's own
transport has none, and a call must not hang `sentiguard down` or the watchdog), sending
those credentials. `restarts(settings)` counts each program's restarts under the running
supervisord from its own log.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import sys
import xmlrpc.client
from typing import Any

from sentiguard.errors import SettingsError
from sentiguard.runtime import control
from sentiguard.runtime.net import UnixHTTPConnection
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import ROOT, Settings

# Start order (lowest first); supervisord stops in the reverse order, so the watchdog stops
# first and cannot restart a worker that shutdown just stopped, and the gateway stops last.
PRIORITY = {"gateway": 100, "primary": 200, "watchdog": 300}
PROGRAMS = tuple(PRIORITY)
# Failed starts in a row (exits within `startsecs`) before supervisord gives a gateway or
# watchdog up as FATAL, with its own backoff of 1, 2, 3 ... s between them.
START_RETRIES = 5
# What a gateway process keeps of its stopwaitsecs for exiting after its drain.
EXIT_MARGIN_S = 0.5
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def stop_wait_s(settings: Settings) -> int:
    """Seconds supervisord waits for one program to stop before SIGKILL.

    Groups stop one after another, so three of these plus a margin fit in the graceful
    timeout that `up` enforces as a hard deadline.
    """
    return max(1, (settings.service.graceful_timeout_s - 1) // len(PROGRAMS))


def gateway_drain_s(settings: Settings) -> float:
    """Longest a gateway process drains after its SIGTERM: inside its stopwaitsecs, with
    `EXIT_MARGIN_S` left to exit, so supervisord never has to SIGKILL a draining gateway."""
    return max(0.5, stop_wait_s(settings) - EXIT_MARGIN_S)


def gateway_process_name(index: int) -> str:
    """supervisord's name of gateway process `index` (group `gateway`)."""
    return f"gateway_{index}"


def _ini_value(text: str) -> str:
    # Every value in the file passes through supervisord's %(name)s expansion.
    return text.replace("%", "%%")


_INLINE_COMMENT = re.compile(r"\s[;#]")


def _env_value(name: str, value: str) -> str:
    """One value of an `environment=` line, quoted for supervisord's parser.

    supervisord splits that line with a non-POSIX shlex (no escapes; quotes are kept, then
    stripped from both ends), and its INI parser cuts at an inline comment (` ;` or ` #`).
    A value none of that can carry is refused, naming the setting, instead of reaching the
    children mangled.
    """
    quote = "'" if '"' in value else '"'
    if (
        (quote == "'" and "'" in value)
        or "\n" in value
        or _INLINE_COMMENT.search(value)
        or value[:1] in ("'", '"')
        or value[-1:] in ("'", '"')
    ):
        raise SettingsError(
            f"{name} = {value!r} cannot be passed through supervisord's environment= line "
            f"(quotes at its ends, both quote kinds, a newline, or ' ;'/' #'). Hint: choose "
            f"a value without them."
        )
    return quote + _ini_value(value) + quote


def _environment(settings: Settings, **extra: str) -> str:
    env = {"PYTHONUNBUFFERED": "1", **settings.as_env(), **extra}
    return ",".join(f"{k}={_env_value(k, v)}" for k, v in sorted(env.items()))


def _command(module: str, *args: str) -> str:
    return _ini_value(shlex.join([sys.executable, "-m", module, *args]))


def render_supervisord_conf(settings: Settings, autostart: bool = True) -> str:
    """The supervisord config for these settings (written to `<run_dir>/supervisord.conf`).

    `autostart=False` is for a supervisord that takes over programs still running after
    the last one died (`runtime.takeover`): it starts nothing by itself.
    """
    logs = RunDir(settings).logs
    log_bytes = f"{int(settings.service.log_max_mb)}MB"
    backups = settings.service.log_backups
    environment = _environment(settings)
    stopwait = stop_wait_s(settings)
    sock = _ini_value(str(RunDir(settings).supervisor_socket))
    user, password = control.supervisor_credentials(control.ensure_secret(settings))
    # supervisord keeps only a hash; supervisorctl needs the password itself.
    password_sha = "{SHA}" + hashlib.sha1(password.encode()).hexdigest()

    def program(
        name: str, command: str, log_name: str, env: str = environment, **extra: Any
    ) -> list[str]:
        lines = [
            f"[program:{name}]",
            f"command = {command}",
            f"directory = {_ini_value(str(ROOT))}",
            f"priority = {PRIORITY[name]}",
            f"autostart = {str(autostart).lower()}",
            "stopsignal = TERM",
            f"stopwaitsecs = {stopwait}",
            # Each child leads its own process group (supervisord calls setpgrp), so
            # signalling the group also reaches anything the child forked.
            "stopasgroup = true",
            "killasgroup = true",
            "redirect_stderr = true",
            # log_name may hold supervisord's own %(...)s expansions; only the directory is ours.
            f"stdout_logfile = {_ini_value(str(logs))}/{log_name}",
            f"stdout_logfile_maxbytes = {log_bytes}",
            f"stdout_logfile_backups = {backups}",
            f"environment = {env}",
        ]
        lines += [f"{k} = {v}" for k, v in extra.items()]
        return [*lines, ""]

    lines = [
        "; Rendered by `sentiguard up` from the resolved settings; edits are overwritten.",
        "",
        "[unix_http_server]",
        f"file = {sock}",
        "chmod = 0700",
        f"username = {user}",
        f"password = {password_sha}",
        "",
        "[supervisord]",
        f"logfile = {_ini_value(str(RunDir(settings).log('supervisord')))}",
        f"logfile_maxbytes = {log_bytes}",
        f"logfile_backups = {backups}",
        "loglevel = info",
        f"pidfile = {_ini_value(str(RunDir(settings).supervisord_pid))}",
        f"childlogdir = {_ini_value(str(logs))}",
        "nodaemon = true",
        # As root, supervisord warns that it drops no privileges unless told whom to run as.
        *(["user = root"] if os.geteuid() == 0 else []),
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl = unix://{sock}",
        f"username = {user}",
        f"password = {password}",
        "",
    ]
    metrics_dir = str(RunDir(settings).metrics_dir)
    lines += program(
        "gateway",
        # %(process_num)d is expanded by supervisord, so it must not be escaped.
        _command("sentiguard.gateway", "--index", "PROCESS_NUM").replace(
            "PROCESS_NUM", "%(process_num)d"
        ),
        "%(program_name)s_%(process_num)d.log",
        env=_environment(settings, **{PROMETHEUS_ENV: metrics_dir}),
        numprocs=settings.gateway.processes,
        numprocs_start=0,
        process_name="%(program_name)s_%(process_num)d",
        autorestart="true",
        startsecs=1,
        startretries=START_RETRIES,
    )
    lines += program(
        "primary",
        # %(process_num)d is expanded by supervisord, so it must not be escaped.
        _command("sentiguard.primary", "--index", "PROCESS_NUM").replace(
            "PROCESS_NUM", "%(process_num)d"
        ),
        "%(program_name)s_%(process_num)d.log",
        numprocs=settings.primary.workers,
        numprocs_start=0,
        process_name="%(program_name)s_%(process_num)d",
        autorestart="false",
        startsecs=0,
        startretries=0,
    )
    lines += program(
        "watchdog",
        _command("sentiguard.watchdog"),
        "watchdog.log",
        autorestart="true",
        startsecs=1,
        startretries=START_RETRIES,
    )
    return "\n".join(lines)


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, settings: Settings, timeout: float) -> None:
        super().__init__()
        self.settings = settings
        self.path = RunDir(settings).supervisor_socket
        self.timeout = timeout

    def _auth_headers(self) -> list[tuple[str, str]]:
        # Read at each call: a new `up` writes a new secret. Without one, no credentials
        # (supervisord then answers 401, turned into PermissionError below).
        try:
            secret = control.read_secret(self.settings)
        except FileNotFoundError:
            return []
        token = base64.b64encode(":".join(control.supervisor_credentials(secret)).encode())
        return [("Authorization", f"Basic {token.decode()}")]

    def make_connection(self, host: Any) -> UnixHTTPConnection:
        connection = UnixHTTPConnection(self.path, self.timeout)
        self._connection = (host, connection)  # what Transport.close() closes
        self._extra_headers = self._auth_headers()  # sent by Transport.send_request
        return connection

    def request(self, host: Any, handler: str, request_body: Any, verbose: bool = False) -> Any:
        # One connection per call, closed at once: a proxy is often dropped without
        # close(), and a kept-alive socket would then leak until garbage collection.
        try:
            return super().request(host, handler, request_body, verbose)
        except xmlrpc.client.ProtocolError as e:
            if e.errcode != 401:
                raise
            raise PermissionError(
                f"supervisord on {self.path} refused this run directory's credentials: it "
                f"was started by another `sentiguard up` than the one that wrote "
                f"{RunDir(self.settings).secret}. Hint: stop it from the shell that started "
                f"it (Ctrl-C), or kill its pid in {RunDir(self.settings).supervisord_pid}."
            ) from e
        finally:
            self.close()


def rpc(settings: Settings, timeout: float = 5.0) -> Any:
    """An XML-RPC proxy to this service's supervisord, e.g. `rpc(s).supervisor.getState()`.

    Raises OSError (e.g. FileNotFoundError, ConnectionRefusedError) when supervisord is not
    listening on `<run_dir>/supervisor.sock`, and PermissionError when it refuses the
    credentials of `<run_dir>/secret`.
    """
    return xmlrpc.client.ServerProxy(
        "http://localhost/RPC2", transport=_UnixTransport(settings, timeout)
    )


_STARTED = re.compile(r"supervisord started with pid (\d+)")
_SPAWNED = re.compile(r"spawned: '([^']+)' with pid (\d+)")


def restarts(settings: Settings, tail_bytes: int = 1 << 20) -> dict[str, int]:
    """How often supervisord restarted each program since it last started, from its log
    (`{"gateway_0": 0, "watchdog": 1, "primary_0": 3}`); empty when there is no log.

    Counts `spawned:` lines after the last `supervisord started` line, minus the first
    start. Best effort: after the log rotates mid-run, older restarts are not counted.
    """
    try:
        with RunDir(settings).log("supervisord").open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return {}
    starts = list(_STARTED.finditer(text))
    if starts:
        text = text[starts[-1].end() :]
    spawns: dict[str, int] = {}
    for match in _SPAWNED.finditer(text):
        spawns[match.group(1)] = spawns.get(match.group(1), 0) + 1
    return {name: n - 1 for name, n in spawns.items()}

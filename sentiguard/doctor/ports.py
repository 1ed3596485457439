"""What is already running: the gateway and worker ports, supervisord's socket."""

from __future__ import annotations

import json
import socket
import urllib.request

import psutil

from sentiguard.doctor.report import Result, fail, ok, warn
from sentiguard.runtime import supervisord
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings

# --- ports and the supervisord socket ---------------------------------------------------


def _listener(port: int) -> psutil.Process | None:
    """The process listening on TCP `port`, when this user may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return None
            try:
                return psutil.Process(conn.pid)
            except psutil.Error:
                return None
    return None


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the servers themselves, so TIME_WAIT leftovers do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _answers_like(url: str, key: str) -> bool:
    """Whether `url` answers JSON holding `key`: our gateway or worker, when psutil
    cannot name the listening process (another user's)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return key in json.loads(response.read())
    except Exception:  # an error page, a 503 with another body, a timeout: not ours
        return False


def check_port(
    check: str, host: str, port: int, module: str, probe_path: str, probe_key: str
) -> Result:
    """Free, or held by our own `python -m <module>` (the service is up: say so)."""
    if _port_free(host, port):
        return ok(check, f"{host}:{port} free")
    proc = _listener(port)
    if proc is not None:
        try:
            cmdline = " ".join(proc.cmdline())
            name = proc.name()
        except psutil.Error:
            cmdline, name = "", "?"
        if module in cmdline:
            return ok(check, f"{host}:{port} in use by our running {module} (pid {proc.pid})")
        who = f"pid {proc.pid} ({name})"
    else:
        loop = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if _answers_like(f"http://{loop}:{port}{probe_path}", probe_key):
            return ok(check, f"{host}:{port} in use by our running {module}")
        who = "a process this user cannot see"
    return fail(
        check,
        f"{host}:{port} is taken by {who}",
        "stop that process, or choose another port (see conf/sentiguard.toml; "
        "`sentiguard up --port P` for the gateway)",
    )


def check_ports(settings: Settings) -> list[Result]:
    host = settings.gateway.host
    results = [
        check_port(
            "gateway port",
            host,
            settings.gateway.port,
            "sentiguard.gateway",
            "/health",
            "reasons",
        )
    ]
    base = settings.primary.base_port
    for i in range(settings.primary.workers):
        results.append(
            check_port(
                f"worker port {i}", "127.0.0.1", base + i, "sentiguard.primary", "/ready", "ready"
            )
        )
    return results


def check_supervisor_socket(settings: Settings) -> Result:
    """<run_dir>/supervisor.sock: absent (not running), live (running) or a stale file."""
    path = RunDir(settings).supervisor_socket
    check = "supervisord"
    if not path.exists():
        return ok(check, f"{path} absent: the service is not running")
    if not path.is_socket():
        return fail(check, f"{path} exists but is not a socket", f"remove it: rm {path}; then `up`")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return warn(
            check,
            f"{path} is stale: no supervisord listens on it (one died without cleaning up)",
            f"`sentiguard up` replaces it; or remove it: rm {path}",
        )
    except PermissionError:
        return fail(
            check,
            f"{path} belongs to another user",
            "run doctor as the service's user, or set service.run_dir to a directory of yours",
        )
    except OSError as e:
        return fail(check, f"{path}: {e}", f"remove it: rm {path}; then `up`")
    finally:
        probe.close()
    try:
        infos = supervisord.rpc(settings, timeout=2.0).supervisor.getAllProcessInfo()
    except Exception as e:  # live socket, but supervisord does not answer in time
        return warn(
            check,
            f"{path} is live but supervisord does not answer: {e}",
            "`sentiguard down`, then `sentiguard up`",
        )
    states = ", ".join(f"{i['name']} {i['statename']}" for i in infos)
    bad = [i["name"] for i in infos if i["statename"] not in ("RUNNING", "STARTING")]
    if bad:
        return warn(
            check,
            f"live; {states}",
            f"see `sentiguard status` and the logs in {RunDir(settings).logs}",
        )
    return ok(check, f"live: the service is running ({states})")

"""What is already running: the gateway and worker ports, supervisord's socket."""

from __future__ import annotations

import socket

import psutil

from sentiguard.doctor.report import Result, fail, ok, warn
from sentiguard.runtime import supervisord
from sentiguard.runtime.endpoints import WORKER_HOST, workers
from sentiguard.runtime.net import client_host, get_json, port_free, port_holder
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings

# --- ports and the supervisord socket ---------------------------------------------------


def _answers_like(host: str, port: int, path: str, key: str) -> bool:
    """Whether host:port answers JSON holding `key` on `path`: our gateway or worker, when
    psutil cannot name the listening process (another user's)."""
    try:
        _, body = get_json(host, port, path, timeout_s=1.0)
    except OSError:  # refused, a timeout, not HTTP: not ours
        return False
    return body is not None and key in body


def _is_up(proc: psutil.Process) -> bool:
    """`sentiguard up` (`python -m sentiguard up`, or the `sentiguard` script)."""
    try:
        args = proc.cmdline()
    except psutil.Error:
        return False
    return "up" in args and any(a == "sentiguard" or a.endswith("/sentiguard") for a in args)


def check_port(
    check: str, host: str, port: int, module: str, probe_path: str, probe_key: str
) -> Result:
    """Free, or held by our own `python -m <module>` (the service is up: say so).

    The gateway's socket is held by `sentiguard up` too (it hands it to every gateway
    process: `runtime.listener`), and psutil may name that holder first.
    """
    try:
        free = port_free(host, port)
    except OSError:
        free = False
    if free:
        return ok(check, f"{host}:{port} free")
    proc = port_holder(port)
    if proc is not None:
        try:
            cmdline = " ".join(proc.cmdline())
            name = proc.name()
        except psutil.Error:
            cmdline, name = "", "?"
        if module in cmdline or (module == "sentiguard.gateway" and _is_up(proc)):
            return ok(check, f"{host}:{port} in use by our running {module} (pid {proc.pid})")
        who = f"pid {proc.pid} ({name})"
    else:
        if _answers_like(client_host(host), port, probe_path, probe_key):
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
    for w in workers(settings):
        results.append(
            check_port(
                f"worker port {w.index}",
                WORKER_HOST,
                w.port,
                "sentiguard.primary",
                "/ready",
                "ready",
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

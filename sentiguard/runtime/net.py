"""This host's network, as every sentiguard process and command sees it.

One implementation each of: is an address loopback, where a local client reaches a bound
address, is a port free and who holds it, is a unix socket live, and GET one JSON document.
Local HTTP goes through `http.client` and never through a proxy: urllib and requests would
send 127.0.0.1 through an `http_proxy` set in the operator's environment.
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

# A wildcard bind is reachable on loopback; a client connects there.
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (any case, brackets allowed)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def client_host(bound: str) -> str:
    """The address a local client uses to reach a server bound to `bound`."""
    return _WILDCARD_TO_LOOPBACK.get(bound, bound)


def http_url(host: str, port: int, path: str = "") -> str:
    """`http://host:port/path`, with IPv6 literals bracketed."""
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}{path}"


def port_free(host: str, port: int) -> bool:
    """True when `host:port` can be bound the way the servers bind it (SO_REUSEADDR, so
    TIME_WAIT leftovers do not count). Raises OSError when `host` is not of this machine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_holder(port: int) -> psutil.Process | None:
    """The process listening on TCP `port`, when this user may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
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


def describe_holder(port: int) -> str:
    """' (held by pid N, NAME)' when this user may see who listens on `port`, else ''."""
    proc = port_holder(port)
    if proc is None:
        return ""
    try:
        return f" (held by pid {proc.pid}, {proc.name()})"
    except psutil.Error:
        return f" (held by pid {proc.pid})"


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


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (supervisord's control socket, the gateway's control channel)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except OSError:
            sock.close()  # no socket left for the GC to warn about when nobody listens
            raise
        self.sock = sock


def get_json(
    host: str,
    port: int,
    path: str,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """GET one JSON object from `host:port`; (status, the object or None when the body is
    not a JSON object). Raises OSError (TimeoutError, ConnectionRefusedError, ...) when
    nothing answers in time, and for a malformed HTTP answer."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Accept": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
    except http.client.HTTPException as e:
        raise OSError(f"bad HTTP answer from {host}:{port}: {e!r}") from e
    finally:
        conn.close()
    try:
        body = json.loads(data) if data else None
    except ValueError:
        body = None
    return response.status, body if isinstance(body, dict) else None

"""The public listening socket: bound once by `sentiguard up`, shared by every gateway process.

`up` binds `gateway.host:gateway.port` before it starts supervisord and holds the socket
until it exits. supervisord closes every descriptor above 2 in its children, so the socket
cannot be inherited; instead `up` serves `<run_dir>/listener.sock` (mode 0600, in the 0700
run directory, and only to processes of its own user, checked with SO_PEERCRED), and each
gateway process asks there at start and gets the descriptors over SCM_RIGHTS
(`receive`). Every gateway process then accepts on the same kernel socket, with one
accept queue: when one dies, the others go on accepting, and while none runs (all
restarting at once) connections wait in the backlog instead of being refused.

Measured (`bench/listener.py`: stand-in gateways with a 1 s start under the real
supervisord, 16 clients opening a new connection per request, counted over the 6 s after
the fault), refused connections:

    fault                              fcgi-program   SO_REUSEPORT   held by `up`
    SIGKILL of the only process               1,309          2,631              0
    SIGKILL of one of two                         0              0              0
    SIGKILL of both at once                   1,400          1,305              0
    restart of a 2-process group              1,371          2,614              0

supervisord's `[fcgi-program]` socket is closed when no process of the group holds it
(its socket manager ref-counts the children), and SO_REUSEPORT gives each process its own
socket and accept queue, which goes (with what is queued in it) when the process does.
Held by `up`, the socket and its backlog outlive every gateway process: with none running,
connections wait and are answered when one starts.

The whole-service stop closes the listener everywhere at once: `close_everywhere` shuts
the socket down (Linux: a listening socket shut down refuses new connections for every
process holding it, and `accept()` fails with EINVAL in each), which each gateway notices
(`is_listening`) and drains.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings

# The kernel caps this at net.core.somaxconn (4096 on current kernels): connections that
# wait while every gateway process restarts.
BACKLOG = socket.SOMAXCONN
MAX_SOCKETS = 16
HANDOFF_TIMEOUT_S = 5.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def bind_public(settings: Settings) -> list[socket.socket]:
    """Listening sockets on `gateway.host:gateway.port`: one per address the host resolves
    to (`localhost` can be 127.0.0.1 and ::1), as waitress would bind them.

    Raises OSError (EADDRINUSE, EADDRNOTAVAIL, ...) naming nothing more: `up`'s preflight
    has already explained a taken port.
    """
    host = settings.gateway.host or None
    infos = socket.getaddrinfo(
        host, settings.gateway.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, _, _, _, address in infos:
            if (family, address) in seen or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            seen.add((family, address))
            sockets.append(socket.create_server(address, family=family, backlog=BACKLOG))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def is_listening(sock: socket.socket) -> bool:
    """True while `sock` is a listening socket nobody shut down (SO_ACCEPTCONN)."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def close_everywhere(sockets: list[socket.socket]) -> None:
    """Stop the listener for every process holding it: new connections are refused at once.

    A connection already in the accept queue and not yet accepted is reset; the gateway
    processes accept as fast as connections come, so the queue is empty but for a moment.
    """
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


class Handoff:
    """`up`'s side: hands the listening sockets to whichever gateway process asks.

    `start()` binds `<run_dir>/listener.sock` and serves it in a daemon thread whose
    `accept()` waits at most 0.5 s per pass; `stop()` ends it and removes the file.
    """

    def __init__(self, settings: Settings, sockets: list[socket.socket], log: Any) -> None:
        self.path = RunDir(settings).listener_socket
        self.sockets = sockets
        self.log = log
        self.handed = 0
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="listener-handoff", daemon=True)

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # private from bind() on, not from a chmod after it
        try:
            server.bind(str(self.path))
        finally:
            os.umask(old)
        server.listen(16)
        server.settimeout(0.5)
        self._server = server
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        if self._server is not None:
            self._server.close()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with conn:
                self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        conn.settimeout(HANDOFF_TIMEOUT_S)
        try:
            pid, uid, _ = _UCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            if uid != os.getuid():
                self.log("listener_refused", pid=pid, uid=uid, reason="another user")
                return
            names = [_address(s) for s in self.sockets]
            header = json.dumps({"addresses": names}).encode()
            socket.send_fds(conn, [header], [s.fileno() for s in self.sockets])
        except OSError as e:
            self.log("listener_handoff_failed", reason=f"{type(e).__name__}: {e}")
            return
        self.handed += 1


def _address(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def receive(settings: Settings, timeout_s: float = HANDOFF_TIMEOUT_S) -> list[socket.socket] | None:
    """The gateway's side: the listening sockets `up` holds, or None when no `up` serves
    `<run_dir>/listener.sock` (a gateway run alone binds its own).

    Raises OSError when `up` is there but the handoff fails (the process should exit and
    be started again by supervisord).
    """
    path: Path = RunDir(settings).listener_socket
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout_s)
    try:
        try:
            client.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        _, fds, _, _ = socket.recv_fds(client, 4096, MAX_SOCKETS)
    finally:
        client.close()
    if not fds:
        raise OSError(f"{path} answered without a listening socket; is `sentiguard up` stopping?")
    return [socket.socket(fileno=fd) for fd in fds]

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

Socket activation (systemd's `deploy/sentiguard.socket`, or `systemd-socket-activate`): the
service manager binds the socket and holds it across restarts of `up` itself, so even a
restart of the whole service queues connections in the backlog instead of refusing them.
`bind_public` then adopts the descriptors it passed (`listen_fds`: the sd_listen_fds
protocol, LISTEN_PID must be this process, LISTEN_FDS descriptors from fd 3, the variables
unset after use so no child misreads them) instead of binding; each must be a listening
TCP socket on an address `gateway.host:gateway.port` resolves to, or `up` refuses to start
and says which line to fix (`adopt`). Such a socket (`InheritedSocket`) is never shut down:
shut down, it would refuse connections for the next `up` too. The whole-service stop then
only stops accepting: supervisord's SIGTERM makes each gateway process stop accepting and
drain, and `up` closes its own copy; what arrives meanwhile waits in the backlog for the
next `up`'s gateway processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from sentiguard.logs import format_event
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings

# The kernel caps this at net.core.somaxconn (4096 on current kernels): connections that
# wait while every gateway process restarts.
BACKLOG = socket.SOMAXCONN
MAX_SOCKETS = 16
HANDOFF_TIMEOUT_S = 5.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first descriptor a service manager passes
ACTIVATION_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
UNIT_FIX = (
    "make ListenStream= in sentiguard.socket (or systemd-socket-activate -l) the address "
    "gateway.host:gateway.port resolves to, or set gateway.host/gateway.port "
    "(SENTIGUARD_GATEWAY_HOST, SENTIGUARD_GATEWAY_PORT) to the socket's"
)


class ActivationError(OSError):
    """The service manager passed descriptors `up` cannot serve on; the message names the
    descriptor, what it is, and what to change."""


class InheritedSocket(socket.socket):
    """A listening socket the service manager passed in (socket activation). The manager
    holds it across restarts of `up`, so `close_everywhere` never shuts it down."""


def _say(event: str, **fields: Any) -> None:
    # `up`'s stderr, in the shared JSON format (as `up`'s own lines).
    print(format_event(event, **fields), file=sys.stderr, flush=True)


def socket_activated(environ: MutableMapping[str, str] | None = None) -> bool:
    """True when a service manager passed this process listening sockets (LISTEN_PID is our
    pid, LISTEN_FDS above 0). Only reads the variables: `bind_public` consumes them."""
    env = os.environ if environ is None else environ
    ours = env.get("LISTEN_PID", "") == str(os.getpid())
    return ours and env.get("LISTEN_FDS", "0") not in ("", "0")


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[tuple[int, str]]:
    """sd_listen_fds(unset_environment=1): the (descriptor, name) pairs a service manager
    passed this process, from fd 3 on; [] when it passed none or they are another
    process's (LISTEN_PID is not ours: logged, left alone).

    The variables are removed from `environ` (default `os.environ`, so supervisord and the
    programs do not inherit them), and each descriptor is made close-on-exec, as systemd's
    own sd_listen_fds does. Raises ActivationError on a malformed LISTEN_FDS.
    """
    env = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in ACTIVATION_ENV}
    pid, count, names = values["LISTEN_PID"], values["LISTEN_FDS"], values["LISTEN_FDNAMES"]
    if count is None or count == "0":
        return []
    if pid != str(os.getpid()):
        _say(
            "listen_fds_ignored",
            listen_pid=pid,
            pid=os.getpid(),
            listen_fds=count,
            reason="LISTEN_FDS was set for another process",
            fix="a wrapper between the service manager and `sentiguard up` must exec it "
            "(keeping the pid) or set LISTEN_PID to its pid: `export LISTEN_PID=$$; exec ...`",
        )
        return []
    if not count.isdigit() or not 0 < int(count) <= MAX_SOCKETS:
        raise ActivationError(
            f"LISTEN_FDS={count!r} is not a number of sockets from 1 to {MAX_SOCKETS}. Hint: "
            f"give sentiguard.socket at most {MAX_SOCKETS} ListenStream= lines."
        )
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
    labels = (names or "").split(":")
    if len(labels) != len(fds):
        labels = [""] * len(fds)
    for fd in fds:
        with contextlib.suppress(OSError):  # a bad descriptor is `adopt`'s to explain
            os.set_inheritable(fd, False)
    return list(zip(fds, labels, strict=True))


def _expected(settings: Settings) -> list[tuple[int, Any]]:
    """(family, address) of each socket `gateway.host:gateway.port` binds, as waitress would
    bind them (`localhost` can be 127.0.0.1 and ::1)."""
    host = settings.gateway.host or None
    infos = socket.getaddrinfo(
        host, settings.gateway.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    found: list[tuple[int, Any]] = []
    for family, _, _, _, address in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, address) not in found:
            found.append((family, address))
    return found


def adopt(settings: Settings, passed: list[tuple[int, str]]) -> list[socket.socket]:
    """The passed descriptors as sockets, each checked: a socket, SOCK_STREAM, TCP,
    listening, on an address of `gateway.host:gateway.port`. Raises ActivationError naming
    the first that is not, and the fix; takes none of them then."""
    want = {(family, address[:2]) for family, address in _expected(settings)}
    where = f"{settings.gateway.host}:{settings.gateway.port}"
    adopted: list[socket.socket] = []
    try:
        for fd, name in passed:
            what = f"fd {fd}" + (f" ({name})" if name else "") + " from LISTEN_FDS"
            adopted.append(_check(InheritedSocket(fileno=_socket_fd(fd, what)), what, want, where))
    except BaseException:
        for sock in adopted:
            sock.detach()  # the service manager's descriptors: leave them open
        raise
    return adopted


def _socket_fd(fd: int, what: str) -> int:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        raise ActivationError(
            f"{what} is not open ({e.strerror}). Hint: the service manager passed fewer "
            f"descriptors than LISTEN_FDS says; start `sentiguard up` from sentiguard.socket "
            f"(or systemd-socket-activate) directly."
        ) from e
    if not stat.S_ISSOCK(mode):
        kind = "a pipe" if stat.S_ISFIFO(mode) else "a regular file" if stat.S_ISREG(mode) else ""
        raise ActivationError(
            f"{what} is {kind or 'not a socket'}, not a listening socket. Hint: "
            f"sentiguard.socket must use ListenStream= (not ListenFIFO=/ListenSpecial=)."
        )
    return fd


def _check(
    sock: InheritedSocket, what: str, want: set[tuple[int, Any]], where: str
) -> socket.socket:
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ActivationError(
                f"{what} is a {getattr(sock.family, 'name', sock.family)} socket; sentiguard "
                f"serves TCP on gateway.host:gateway.port. Hint: use ListenStream={where}."
            )
        if sock.type != socket.SOCK_STREAM:
            raise ActivationError(
                f"{what} is a {getattr(sock.type, 'name', sock.type)} socket, not a stream. "
                f"Hint: use ListenStream=, not ListenDatagram=/ListenSequentialPacket=."
            )
        if not is_listening(sock):
            raise ActivationError(
                f"{what} is a TCP socket that is not listening (a connection: Accept=yes?). "
                f"Hint: set Accept=no in sentiguard.socket; one `up` serves the socket."
            )
        if (sock.family, sock.getsockname()[:2]) not in want:
            raise ActivationError(
                f"{what} listens on {_address(sock)}, but gateway.host:gateway.port is "
                f"{where}. Hint: {UNIT_FIX}."
            )
    except BaseException:
        sock.detach()
        raise
    return sock


def bind_public(settings: Settings) -> list[socket.socket]:
    """Listening sockets on `gateway.host:gateway.port`: the ones a service manager passed
    (socket activation: `listen_fds`, `adopt`; logged as `listener_adopted`), else one
    bound per address the host resolves to (`localhost` can be 127.0.0.1 and ::1), as
    waitress would bind them.

    Raises ActivationError (an OSError whose message has the fix) for passed descriptors
    it cannot serve on, else OSError (EADDRINUSE, EADDRNOTAVAIL, ...) naming nothing more:
    `up`'s preflight has already explained a taken port.
    """
    passed = listen_fds()
    if passed:
        adopted = adopt(settings, passed)
        _say(
            "listener_adopted",
            addresses=[_address(s) for s in adopted],
            fds=[fd for fd, _ in passed],
            names=[name for _, name in passed if name],
            action="serve on the service manager's socket; a restart of `up` keeps it "
            "listening, connections wait in its backlog",
        )
        return adopted
    sockets: list[socket.socket] = []
    try:
        for family, address in _expected(settings):
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


def close_everywhere(sockets: list[socket.socket]) -> str:
    """Stop the listener for every process holding it: new connections are refused at once.
    Returns what it did, for the caller's log line.

    A connection already in the accept queue and not yet accepted is reset; the gateway
    processes accept as fast as connections come, so the queue is empty but for a moment.

    A socket the service manager passed (`InheritedSocket`) is left listening: it outlives
    this `up`, and shut down it would refuse for the next one too. The gateway processes
    then stop accepting on supervisord's SIGTERM; connections wait in the backlog.
    """
    kept = 0
    for sock in sockets:
        if isinstance(sock, InheritedSocket):
            kept += 1
            continue
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)
    if kept:
        return (
            "kept listening (socket activation: the service manager holds it); gateways "
            "stop accepting on SIGTERM, new connections wait in the backlog for the next `up`"
        )
    return "refuse new connections; gateways drain"


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

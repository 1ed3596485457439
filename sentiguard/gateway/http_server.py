"""The public HTTP server: waitress, hardened against hostile clients.

`build_public_server(app, settings, sockets)` serves the public app on
`gateway.host:gateway.port`, or on listening sockets handed in already bound (a socket
inherited from `sentiguard up` outlives a gateway process). What it changes in waitress:

- **poll, never select**: `select()` fails with "filedescriptor out of range" once a
  descriptor passes 1024, which killed the serving loop; `poll()` has no such ceiling.
- **connection limit from RLIMIT_NOFILE** (`ConnectionBudget`, soft raised to hard), with
  room for everything else the process opens, so `accept()` never meets EMFILE.
- **full is not silent**: at the limit, the oldest connection without a request under way
  (header still arriving, or idle) is closed to make room; when none is, the newcomer gets
  503 + Retry-After at once instead of waiting unanswered in the listen backlog.
- **header timeout**: waitress's `channel_timeout` closes only *idle* channels, so a
  slowloris trickling a byte now and then lived forever. A request header not complete
  `gateway.header_timeout_s` after it began (the open, for a first request) is closed.
- **body rate**: nor did anything bound a body trickling a byte now and then. A body not
  complete `gateway.body_timeout_s` after its header's end, plus 1 s for each
  `gateway.body_min_bytes_per_s` bytes received (mod_reqtimeout's `body=20,MinRate=500`),
  is answered 408 in the JSON error shape and closed (lingering, like a shed).
- **body bound**: waitress buffers `max_request_body_size` before the app sees a request:
  `gateway.max_body_bytes` plus a margin for chunked framing, not 4x.
- **refusals a sending client can read**: waitress's own errors answer in the one JSON
  error shape, then the connection lingers (http_channel.py).
"""

from __future__ import annotations

import errno
import resource
import socket
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any

from waitress.adjustments import Adjustments
from waitress.server import BaseWSGIServer, MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from sentiguard import settings as settings_mod
from sentiguard.gateway.http_channel import GuardedChannel, error_body
from sentiguard.logs import log_event

# Descriptors the process needs besides public connections. stdin/stdout/stderr; files:
# log files, the fallback model, psutil's /proc reads, urandom, the readiness poller's
# connections; the control server (waitress's default connection limit of 100, its listener
# and its trigger pipe); the public server's trigger pipe (one map entry, two descriptors).
STDIO_FDS = 3
FILES_FDS = 64
CONTROL_FDS = Adjustments.connection_limit + 3
TRIGGER_EXTRA_FDS = 1
# A public connection can hold two descriptors: its socket, and a temporary file once its
# body passes waitress's `inbuf_overflow` (512 KiB), which a 2 MB body does.
FDS_PER_CONNECTION = 2
# Connections accepted past the limit only to be answered 503 and closed (socket only).
SHED_RESERVE = 32
MIN_CONNECTIONS = 16
# Room for chunked framing (chunk sizes and CRLFs): a chunked body whose payload is within
# max_body_bytes must still reach the app, which refuses the payload itself past it.
BODY_MARGIN_BYTES = 64 * 1024
# A connection answered 503 at once lingers this long at most (its request is small).
SHED_LINGER_S = 1.0
# A body cut for its rate: after the 408 its client's next bytes (or this long) end it.
SLOW_BODY_LINGER_S = 2.0
EVICT_SCAN = 1024
ACCEPT_BATCH = 64


@dataclass(frozen=True)
class ConnectionBudget:
    """How many connections the public server holds, from the descriptor limit.

    limit = (nofile - reserved) // 2, reserved = stdio 3 + files 64 + control 103 + the
    trigger's second descriptor 1 + worker pools (threads x workers) + responses being
    spilled (threads) + shed reserve 32. With the defaults (96 threads, 2 workers) and
    nofile 20,000: reserved 491, limit 9,754 connections; at nofile 1,024: 266.
    """

    nofile: int
    reserved: int
    connection_limit: int

    @classmethod
    def for_settings(cls, nofile: int, settings: settings_mod.Settings) -> ConnectionBudget:
        threads = settings.gateway.threads
        # Each gateway thread keeps one keep-alive connection per primary worker, and a
        # request being answered may spill a large response (past waitress's
        # outbuf_overflow, 1 MiB) to a temporary file while its body file is still open.
        pools = threads * settings.primary.workers
        reserved = (
            STDIO_FDS + FILES_FDS + CONTROL_FDS + TRIGGER_EXTRA_FDS + pools + threads
        ) + SHED_RESERVE
        limit = max(MIN_CONNECTIONS, (nofile - reserved) // FDS_PER_CONNECTION)
        return cls(nofile=nofile, reserved=reserved, connection_limit=limit)


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return target


class PublicServer(TcpWSGIServer):
    """waitress's TCP server with the header and body timeouts, shedding, JSON refusals."""

    channel_class = GuardedChannel
    next_channel_cleanup: float = 0.0
    in_connection_overflow: bool = False

    def __init__(self, *args: Any, settings: settings_mod.Settings, **kw: Any) -> None:
        g = settings.gateway
        self.header_timeout_s = float(g.header_timeout_s)
        self.body_timeout_s = float(g.body_timeout_s)
        self.body_min_bytes_per_s = g.body_min_bytes_per_s
        # Maintenance runs from readable(), once per loop pass at most (the pass waits up to
        # asyncore_loop_timeout): often enough that the timeouts hold within ~1 s.
        self.evict_grace_s = min(1.0, self.header_timeout_s / 4)
        self.cleanup_s = min(self.evict_grace_s, self.body_timeout_s / 4)
        self.max_body_bytes = g.max_body_bytes
        self.max_texts = g.max_texts
        self.retry_after_s = g.retry_after_s
        self.linger_bytes = 2 * g.max_body_bytes
        self.accept_paused_until = 0.0
        self.shed_count = 0
        self.evicted_count = 0
        super().__init__(*args, **kw)

    def describe_error(self, error: Any) -> tuple[str, str]:
        """The JSON error code and message (what to do next) of a waitress refusal."""
        status = int(error.code)
        if status == 413:
            return "payload_too_large", (
                f"the request body is larger than {self.max_body_bytes} bytes. Split the "
                f"texts into several requests of at most {self.max_texts} texts each."
            )
        if status == 431:
            limit = self.adj.max_request_header_size
            return "header_too_large", (
                f"the request header is larger than {limit} bytes: send fewer or shorter headers."
            )
        if status == 501:
            return "not_implemented", (
                "unsupported Transfer-Encoding: send the body with Content-Length or "
                "Transfer-Encoding: chunked."
            )
        if status >= 500:
            return "internal_error", "the gateway failed on this request; retry it."
        return "bad_request", f"malformed HTTP request ({error.body}): send valid HTTP/1.1."

    def refusal(self, status: str, code: str, message: str, *headers: tuple[str, str]) -> bytes:
        """A whole response in the one JSON error shape, closing the connection: what the
        server answers by itself, outside the app (a shed, a body too slow)."""
        body = error_body(code, message)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
        )
        return head.encode("latin-1") + body

    def shed_response(self) -> bytes:
        return self.refusal(
            "503 Service Unavailable",
            "overloaded",
            f"the gateway holds its most connections ({self.adj.connection_limit}). "
            f"Retry after {self.retry_after_s} s.",
            ("Retry-After", str(self.retry_after_s)),
        )

    def slow_body_response(self, channel: GuardedChannel, now: float) -> bytes:
        received, of, waited = 0, "", 0.0
        request = channel.request
        if request is not None:
            received = request.body_bytes_received
            of = f" of {request.content_length}" if request.content_length else ""  # chunked: 0
            waited = now - (request.body_started or now)
        return self.refusal(
            "408 Request Timeout",
            "body_too_slow",
            f"the request body came too slowly: {received}{of} bytes in {waited:.0f} s, where "
            f"the gateway allows {self.body_timeout_s:g} s plus 1 s per "
            f"{self.body_min_bytes_per_s} bytes. Send the body faster (all of it at once), "
            "or have the operator raise gateway.body_timeout_s or lower "
            "gateway.body_min_bytes_per_s.",
        )

    def readable(self) -> bool:
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.cleanup_s
            self.maintenance(now)
        if not self.accepting or now < self.accept_paused_until:
            return False
        # Past the limit connections are still accepted, to be answered 503 at once, up to
        # the shed reserve; beyond that they wait in the listen backlog.
        full = len(self._map) >= self.adj.connection_limit + SHED_RESERVE
        if full != self.in_connection_overflow:
            self.in_connection_overflow = full
            log_event(
                "connection_limit_reached" if full else "connection_limit_cleared",
                open_connections=len(self._map),
                connection_limit=self.adj.connection_limit,
            )
        return not full

    def handle_accept(self) -> None:
        # waitress accepts one connection per loop pass, and a pass costs time in proportion
        # to the open connections (poll is re-armed for each): a burst of thousands would
        # drain from the backlog at O(n^2), with a new client waiting behind it.
        for _ in range(ACCEPT_BATCH):
            if not self._accept_one() or not self.readable():
                return

    def _accept_one(self) -> bool:
        shed = len(self._map) >= self.adj.connection_limit
        try:
            accepted = self.accept()
            if accepted is None:
                return False
            conn, addr = accepted
            self.set_socket_options(conn)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors despite the budget: stop polling the listener briefly
                # instead of retrying accept() in a busy loop.
                self.accept_paused_until = time.time() + 0.1
                log_event("accept_failed", reason=str(e))
            return False
        if shed:
            # At the limit, the oldest connection without a request under way (a header
            # still arriving, or idle) makes room: a flood of idle connections then cycles
            # through the slots while every client that sends a whole header is served.
            victim = self._oldest_evictable(time.time())
            if victim is not None:
                victim.close_now()
                self.evicted_count += 1
                shed = False
        channel = self.channel_class(self, conn, addr, self.adj, map=self._map)
        if shed:
            channel.shed(self.shed_response(), SHED_LINGER_S)
            self.shed_count += 1
        return True

    def _oldest_evictable(self, now: float) -> GuardedChannel | None:
        # Only a channel that has waited the grace: one accepted a moment ago has its header
        # in the kernel's buffer, not read yet (accepts come in batches), and in a burst the
        # newcomers would evict each other. active_channels keeps accept order; the scan is
        # bounded so a server full of busy channels sheds instead of scanning them all.
        cutoff = now - self.evict_grace_s
        for channel in islice(self.active_channels.values(), EVICT_SCAN):
            since = channel.waiting_since()
            if since is not None and since <= cutoff:
                return channel
        return None

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # waitress's idle timeout
        closed = cut = 0
        for channel in list(self.active_channels.values()):
            if channel.lingering:
                if now >= channel.linger_until:
                    channel.close_now()
            elif channel.header_overdue(now, self.header_timeout_s):
                channel.will_close = True  # closed on the next pass, from handle_write
                closed += 1
            elif channel.body_overdue(now, self.body_timeout_s, self.body_min_bytes_per_s):
                channel.shed(self.slow_body_response(channel, now), SLOW_BODY_LINGER_S)
                cut += 1
        if cut:
            log_event(
                "body_timeout",
                closed=cut,
                body_timeout_s=self.body_timeout_s,
                body_min_bytes_per_s=self.body_min_bytes_per_s,
                open_connections=len(self._map),
            )
        if closed:
            log_event(
                "header_timeout",
                closed=closed,
                header_timeout_s=self.header_timeout_s,
                open_connections=len(self._map),
            )
        if self.shed_count or self.evicted_count:
            log_event(
                "connection_limit_full",
                evicted=self.evicted_count,
                shed_503=self.shed_count,
                connection_limit=self.adj.connection_limit,
            )
            self.shed_count = self.evicted_count = 0


def build_public_server(
    app: Any,
    settings: settings_mod.Settings,
    sockets: list[socket.socket] | None = None,
) -> PublicServer | MultiSocketServer:
    """The public server on `gateway.host:gateway.port`, or on `sockets` (bound, listening).

    Call `.run()` in a thread; it returns one server, or a `MultiSocketServer` when there
    are several listeners (a host name with several addresses, or several sockets).
    """
    g = settings.gateway
    budget = ConnectionBudget.for_settings(raise_nofile_limit(), settings)
    where: dict[str, Any] = (
        {"sockets": sockets} if sockets is not None else {"host": g.host, "port": g.port}
    )
    adj = Adjustments(
        **where,
        threads=g.threads,
        connection_limit=budget.connection_limit,
        max_request_body_size=g.max_body_bytes + BODY_MARGIN_BYTES,
        asyncore_use_poll=True,
        ident="sentiguard",
        expose_tracebacks=False,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    shared: dict[int, Any] = {}
    servers: list[PublicServer] = []
    common: dict[str, Any] = {"map": shared, "dispatcher": dispatcher, "adj": adj}
    if sockets is None:
        for sockinfo in adj.listen:
            servers.append(PublicServer(app, settings=settings, sockinfo=sockinfo, **common))
    else:
        for sock in adj.sockets:
            info = (sock.family, sock.type, sock.proto, sock.getsockname())
            servers.append(
                PublicServer(
                    app, settings=settings, _sock=sock, bind_socket=False, sockinfo=info, **common
                )
            )
    if not servers:
        raise ValueError("build_public_server: no address to listen on")
    for server in servers:
        server.budget = budget
    if len(servers) == 1:
        return servers[0]
    listen = [(s.effective_host, s.effective_port) for s in servers]
    multi = MultiSocketServer(shared, adj, listen, dispatcher, servers[0].log_info)
    multi.budget = budget
    multi.listening = servers  # the map drops a closed listener; listener_fault must see it
    return multi


def listeners(server: PublicServer | MultiSocketServer | Any) -> list[Any]:
    """The listening servers: one, or several when there are several addresses."""
    if isinstance(server, MultiSocketServer):
        built: list[Any] | None = getattr(server, "listening", None)
        return built or [s for s in server.map.values() if isinstance(s, BaseWSGIServer)]
    return [server]


def listener_fault(server: Any) -> str | None:
    """Why a listener no longer accepts connections (closed, or out of the poll map)."""
    for s in listeners(server):
        sock = s.socket
        if sock is None or sock.fileno() < 0:
            return f"listening socket {s.effective_host}:{s.effective_port} closed"
        if s._map.get(s._fileno) is not s:
            return f"listening socket {s.effective_host}:{s.effective_port} left the poll map"
    return None

"""The public server's connections: header and body deadlines, JSON refusals, lingering close.

`GuardedChannel` is waitress's `HTTPChannel` plus what http_server.py's `PublicServer`
needs from each connection:

- when its request header began (`TimedParser.started`; the connection's open for a first
  request), so the server can close it past `gateway.header_timeout_s`;
- when the server began waiting for its request body and how much of it has come
  (`TimedParser.body_started`, `body_bytes_received`), so the server can answer 408 to a
  body slower than `gateway.body_timeout_s` + `gateway.body_min_bytes_per_s` allow;
- waitress's own refusals (413, 431, 400, 501, 500) in the one JSON error shape
  (`JSONErrorTask`), with the code and message (what to do next) from the server's
  `describe_error`;
- a *lingering close* after a refusal or a shed: shut down the sending side, read and
  discard what the client still sends until it closes, `LINGER_S` passes or the server's
  `linger_bytes` are read, then close. Closing with unread data sends an RST, and a client
  still uploading its body would see "connection reset" instead of the 413.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.task import ErrorTask

# Lingering close: how long and how much of a refused request's remaining body is read
# and discarded before the socket is closed anyway.
LINGER_S = 5.0
LINGER_RECV_BYTES = 256 * 1024


def error_body(code: str, message: str) -> bytes:
    doc = {"error": {"code": code, "message": message}}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


class TimedParser(HTTPRequestParser):
    """A request parser that knows when its header began and when the wait for its body
    began, and stops at its first error."""

    started: float | None = None
    # Since when the server has waited for the body (None: no body under way), and
    # `body_bytes_received` then: the body's rate is counted from there. Raw bytes, so a
    # chunked body's framing counts as received.
    body_started: float | None = None
    body_base = 0

    def received(self, data: bytes) -> int:
        in_header = not self.headers_finished
        consumed: int = super().received(data)
        if self.error is not None and self.completed:
            # The request is refused: no 100 Continue for it (waitress would send one and
            # wait for the body), and the rest of this read is not parsed as a new request.
            self.expect_continue = False
            return len(data)
        if in_header and self.headers_finished and not self.completed:
            self.restart_body_clock(time.time())
        return consumed

    def restart_body_clock(self, now: float) -> None:
        self.body_started = now
        self.body_base = self.body_bytes_received

    def body_overdue(self, now: float, timeout_s: float, min_bytes_per_s: int) -> bool:
        """The body under way has had `timeout_s` plus 1 s per `min_bytes_per_s` bytes
        received since its clock started, and is still not complete."""
        if self.body_started is None or self.completed:
            return False
        received = self.body_bytes_received - self.body_base
        allowed = timeout_s + (received / min_bytes_per_s if min_bytes_per_s else 0.0)
        return now - self.body_started > allowed


class JSONErrorTask(ErrorTask):
    """waitress's own refusals in the one JSON error shape, followed by a lingering close."""

    def execute(self) -> None:
        error = self.request.error
        code, message = self.channel.server.describe_error(error)
        body = error_body(code, message)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.channel.linger_wanted = True
        self.write(body)


class GuardedChannel(HTTPChannel):
    """A connection with header and body deadlines and a lingering close after a refusal."""

    parser_class = TimedParser
    error_task_class = JSONErrorTask
    linger_wanted = False
    close_on_read = False
    lingering = False
    linger_s = LINGER_S
    linger_until = 0.0
    linger_left = 0
    _in_write = False

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any,
                 map: dict[int, Any] | None = None) -> None:  # fmt: skip
        super().__init__(server, sock, addr, adj, map=map)
        # The first request's header is timed from the connection's open; later ones
        # from their first byte (between requests a keep-alive channel is only idle).
        self.opened_at: float | None = self.creation_time

    def received(self, data: bytes) -> bool:
        since = self.opened_at if self.opened_at is not None else time.time()
        if data.strip():
            # A request has begun: from now on its own start times its header, and once it
            # is served the channel is idle keep-alive, not a connection that sent nothing.
            self.opened_at = None
        result: bool = super().received(data)
        request = self.request
        if request is not None and request.started is None:
            request.started = since
        return result

    def evictable(self) -> bool:
        """Holds a slot without a request under way: waiting for a header, or idle."""
        busy = self.requests or self.total_outbufs_len or self.will_close or self.lingering
        if busy or self.close_when_flushed:
            return False
        return self.request is None or not self.request.headers_finished

    def header_overdue(self, now: float, timeout_s: float) -> bool:
        if not self.evictable():
            return False
        # No request yet: timed from the open, unless an earlier request was served (idle
        # keep-alive, left to waitress's channel_timeout). A header under way: its start.
        since = self.opened_at if self.request is None else self.request.started
        return since is not None and now - since > timeout_s

    def body_overdue(self, now: float, timeout_s: float, min_bytes_per_s: int) -> bool:
        """Its request body is slower than the server allows (`TimedParser.body_overdue`).

        Only while the server reads it: while an earlier request of this connection is
        answered (a pipelined one) waitress does not read, so the body's clock starts again
        then, and the client is not blamed for the server's wait."""
        request = self.request
        if request is None or request.body_started is None:
            return False
        if self.will_close or self.close_when_flushed or self.lingering:
            return False  # closing already
        if self.requests or self.total_outbufs_len:
            request.restart_body_clock(now)
            return False
        return request.body_overdue(now, timeout_s, min_bytes_per_s)

    def waiting_since(self) -> float | None:
        """Since when this channel has held its slot with no request under way (None: it
        has one): its open, its header's start, or its last activity when idle."""
        if not self.evictable():
            return None
        if self.request is not None:
            return self.request.started or self.creation_time
        return self.opened_at or self.last_activity

    def shed(self, response: bytes, linger_s: float) -> None:
        """Answer `response` at once, whatever the client sent, then close once the
        client's request (or anything) has been read, or after `linger_s`."""
        with self.outbuf_lock:
            self.outbufs[-1].append(response)
            self.total_outbufs_len += len(response)
        self.linger_wanted = self.close_on_read = True
        self.linger_s = linger_s
        self.close_when_flushed = True

    def readable(self) -> bool:
        return True if self.lingering else bool(super().readable())

    def writable(self) -> bool:
        return False if self.lingering else bool(super().writable())

    def handle_write(self) -> None:
        self._in_write = True
        try:
            super().handle_write()
        finally:
            self._in_write = False

    def handle_close(self) -> None:
        # waitress closes from handle_write once the response is flushed; a refused
        # request's response is followed by a lingering close instead.
        if (
            self._in_write
            and self.linger_wanted
            and not self.lingering
            and not self.total_outbufs_len
            and self.socket is not None
        ):
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.lingering = True
                self.will_close = self.close_when_flushed = False
                self.linger_until = time.time() + self.linger_s
                self.linger_left = max(self.server.linger_bytes, LINGER_RECV_BYTES)
                return
        self.close_now()

    def close_now(self) -> None:
        super().handle_close()

    def handle_read(self) -> None:
        if not self.lingering:
            super().handle_read()
            return
        try:
            data = self.socket.recv(LINGER_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.linger_left -= len(data)
        # A shed connection's request is small: once it is read, nothing is left to reset.
        if not data or self.linger_left <= 0 or self.close_on_read:
            self.close_now()

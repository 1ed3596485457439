"""A gateway process's graceful stop: stop accepting, answer what was accepted, then exit.

The listening socket is shared by every gateway process and held by `sentiguard up`
(`runtime.listener`), so there are two stops:

- **the whole service stops** (`up` got SIGTERM/Ctrl-C, or `sentiguard down`): `up` shuts
  the socket down once, which refuses new connections for every process at once. Each
  gateway sees its listener hang up (`listener_closed`) and begins its drain at once, before
  supervisord gets round to stopping it.
- **this process alone stops** (SIGTERM from supervisord: a restart of one process, or of
  the group): it only stops accepting; connections already queued in the kernel, and new
  ones, go to the other processes, or wait in the backlog for the restarted ones.

A gateway run alone (no `up`) owns its socket and shuts it down itself, like `up` would.

The drain (`begin`, then `wait`): no more `accept()`; every response from then on carries
`Connection: close` (waitress closes the connection after it), so a client with a kept-alive
connection gets the answer to the request it sent and reconnects elsewhere; a connection
that sends nothing for `IDLE_GRACE_S` is closed by waitress's idle timeout. `wait` returns
when no connection is left, or at the deadline the caller derives from supervisord's
stopwaitsecs (`runtime.supervisord.gateway_drain_s`).

waitress has no hook for any of this, so `Drain` adjusts the built server (never how it is
built, which is `http_server.py`'s): the channel class of each listener (for the header),
the idle timeout, and the listener's `handle_close`, which on a hang-up would otherwise close
the server's wake-up pipe with it and stop the whole serving loop.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import WSGITask

from sentiguard.logs import EventLog
from sentiguard.runtime.listener import close_everywhere, is_listening

# A kept-alive connection that sends nothing for this long after the drain began is closed.
# Clients in a loop send their next request within milliseconds; an idle browser's
# connection is not worth holding a stopping process for.
IDLE_GRACE_S = 0.5
POLL_S = 0.05


class DrainingTask(WSGITask):
    """waitress's task, answering `Connection: close` once its server drains.

    A WSGI app may not set hop-by-hop headers (waitress raises), so this is where it goes.
    """

    def build_response_header(self) -> bytes:
        if getattr(self.channel.server, "draining", False):
            self.set_close_on_finish()
        header: bytes = super().build_response_header()
        return header


def listeners(server: BaseWSGIServer | MultiSocketServer) -> list[BaseWSGIServer]:
    """The listening servers: one, or several when the host has several addresses."""
    if isinstance(server, BaseWSGIServer):
        return [server]
    return [s for s in server.map.values() if isinstance(s, BaseWSGIServer)]


class Drain:
    """The graceful stop of one process's public server. `install()` before it serves."""

    def __init__(self, server: BaseWSGIServer | MultiSocketServer, log: EventLog) -> None:
        self.server = server
        self.log = log
        self.listener_closed = threading.Event()  # shut down everywhere: the service stops
        self.started_at: float | None = None

    @property
    def listeners(self) -> list[BaseWSGIServer]:
        return listeners(self.server)

    def install(self) -> None:
        for listener in self.listeners:
            base = listener.channel_class
            listener.channel_class = type(
                f"Draining{base.__name__}", (base,), {"task_class": DrainingTask}
            )
            listener.handle_close = self._on_hangup(listener, listener.handle_close)

    def _on_hangup(self, listener: BaseWSGIServer, close: Any) -> Any:
        def handle_close() -> None:
            # Runs in the serving loop when poll() reports the listener hung up.
            if listener.socket is not None and not is_listening(listener.socket):
                listener.accepting = False  # not polled again; the socket stays open
                self.listener_closed.set()
                return
            close()  # a real fault: the process notices the closed listener and exits

        return handle_close

    def open_connections(self) -> int:
        return sum(len(listener.active_channels) for listener in self.listeners)

    def begin(self, reason: str, close_listener: bool = False) -> None:
        """Stop accepting (for every process too, with `close_listener`); answer every
        response with `Connection: close`; close connections idle for `IDLE_GRACE_S`."""
        if self.started_at is not None:
            return
        self.started_at = time.monotonic()
        for listener in self.listeners:
            listener.draining = True
            listener.accepting = False
            listener.adj.channel_timeout = IDLE_GRACE_S
        if close_listener:
            close_everywhere([listener.socket for listener in self.listeners if listener.socket])
        for listener in self.listeners:
            listener.pull_trigger()  # the loop stops polling the listener now, not in 1 s
        self.log(
            "gateway_draining",
            reason=reason,
            open_connections=self.open_connections(),
            idle_grace_s=IDLE_GRACE_S,
        )

    def wait(self, deadline: float, busy: Any) -> int:
        """Wait until no connection is open and `busy()` is 0, or `deadline` (monotonic);
        returns the connections still open."""
        while time.monotonic() < deadline:
            if not self.open_connections() and not busy():
                return 0
            time.sleep(POLL_S)
        return self.open_connections()

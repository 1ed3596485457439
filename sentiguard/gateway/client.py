"""Pooled HTTP/1.1 client from the gateway to the primary workers.

Each gateway thread keeps one keep-alive `http.client.HTTPConnection` per worker port, so
a request costs no TCP handshake. Every call takes the request's remaining deadline: it
is the connect timeout and the read timeout, so a hung worker costs at most that.

Every request carries `Authorization: Bearer <the per-up secret>` (`runtime.trust`), which a
worker needs for /predict and /_fault; only `auth=False` leaves it out, for the readiness
poller's `/ready`, which must not hand the secret to whatever process holds the port before
it proved to be our worker.

Failures become `WorkerFailure` with a `kind` the router maps to an answer's `reason`:
`connect` (refused, reset, unreachable: open the breaker now), `timeout`, `error` (a 5xx, a
non-JSON or wrong-shaped answer).
"""

from __future__ import annotations

import errno
import http.client
import json
import threading
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from sentiguard.runtime.endpoints import WORKER_HOST
from sentiguard.runtime.trust import Secret, bearer_headers


class FailureKind(StrEnum):
    CONNECT = "connect"
    TIMEOUT = "timeout"
    ERROR = "error"


class WorkerFailure(Exception):
    """A worker did not answer usefully. `kind` says how."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# A keep-alive connection the worker closed (it restarted, or idled us out) fails on
# first use with one of these before any byte of a response arrived; one retry on a new
# connection tells that apart from a worker that is really down.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class WorkerClient:
    """JSON over HTTP to workers on `host`; one pooled connection per (thread, port).
    `secret` is the per-up secret every request carries (shared with the poller, which
    refreshes it)."""

    def __init__(self, secret: Secret, host: str = WORKER_HOST) -> None:
        self.secret = secret
        self.host = host
        self._local = threading.local()
        # Every open connection of every thread, so `close_all` can close them at shutdown
        # (a thread-local pool dies with its thread without closing its sockets).
        self._open: set[http.client.HTTPConnection] = set()
        self._open_lock = threading.Lock()

    def _pool(self) -> dict[int, http.client.HTTPConnection]:
        pool: dict[int, http.client.HTTPConnection] | None = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _drop(self, port: int) -> None:
        conn = self._pool().pop(port, None)
        if conn is not None:
            conn.close()
            with self._open_lock:
                self._open.discard(conn)

    def request(
        self,
        method: str,
        port: int,
        path: str,
        body: Any,
        timeout_s: float,
        *,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> tuple[int, Any]:
        """Send one request and return (status, parsed JSON body) within `timeout_s`.

        Raises `WorkerFailure`; on any failure the connection is dropped, since a late
        answer could otherwise arrive on it and be read as the next request's.
        """
        deadline = time.monotonic() + timeout_s
        payload = None if body is None else json.dumps(body).encode()
        sent = dict(headers or {})
        if payload is not None:
            sent["Content-Type"] = "application/json"
        secret = self.secret.value if auth else None
        if secret is not None:
            sent.update(bearer_headers(secret))
        pool = self._pool()
        reused = port in pool
        try:
            try:
                return self._send(method, port, path, payload, sent, deadline)
            except _STALE:
                self._drop(port)
                if not reused:
                    raise
                return self._send(method, port, path, payload, sent, deadline)
        except WorkerFailure:
            self._drop(port)
            raise
        except TimeoutError as e:
            self._drop(port)
            raise WorkerFailure(FailureKind.TIMEOUT, f"no answer in {timeout_s:.3f} s") from e
        except (ConnectionError, OSError, http.client.HTTPException) as e:
            self._drop(port)
            kind = FailureKind.CONNECT if _is_connect_error(e) else FailureKind.ERROR
            raise WorkerFailure(kind, f"{type(e).__name__}: {e}") from e

    def _send(
        self,
        method: str,
        port: int,
        path: str,
        payload: bytes | None,
        headers: dict[str, str],
        deadline: float,
    ) -> tuple[int, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WorkerFailure(FailureKind.TIMEOUT, "deadline passed before sending")
        pool = self._pool()
        conn = pool.get(port)
        if conn is None:
            conn = pool[port] = http.client.HTTPConnection(self.host, port, timeout=remaining)
            with self._open_lock:
                self._open.add(conn)
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        else:
            conn.timeout = remaining
        conn.request(method, path, body=payload, headers=headers)
        if conn.sock is not None:
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        response = conn.getresponse()
        data = response.read()
        if response.will_close:
            self._drop(port)
        try:
            parsed = json.loads(data) if data else None
        except ValueError as e:
            raise WorkerFailure(
                FailureKind.ERROR, f"answer is not JSON (HTTP {response.status})"
            ) from e
        return response.status, parsed

    def close(self) -> None:
        """Close this thread's connections."""
        for port in list(self._pool()):
            self._drop(port)

    def close_all(self) -> None:
        """Close every thread's connections; only when no request is running (shutdown)."""
        with self._open_lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


def _is_connect_error(error: BaseException) -> bool:
    # Refused, reset, aborted, broken pipe, closed without an answer: the process is gone
    # or going. /predict is idempotent, so the router may retry elsewhere.
    return isinstance(error, ConnectionError) or (
        isinstance(error, OSError) and error.errno in _CONNECT_ERRNOS
    )


_CONNECT_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET}

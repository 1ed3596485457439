"""Slow-body clients against a running gateway: tests and bench/chaos.py share them.

`slow_bodies` opens many connections from this process (its RLIMIT_NOFILE raised), each
sending a whole request header that announces a large body (Content-Length), then one byte
of it every `byte_every_s`, never the whole body. Once they are all open, a prober asks as a
new client (GET /health and POST /analyze, a new connection each) again and again: not
before, or its own connections would take slots of the burst, and a gateway meant to be
filled to its limit would be left a slot short. It watches how each
slow connection ends: answered 408 by the gateway's body rate rule, answered 503 at once
(the gateway was full), closed with no answer (evicted before its header was read), reset,
refused at connect, or still open at the wait's end (closed by this process).

It returns numbers; the tests assert the gateway's own promises on them, the benchmark
prints them. Traffic goes to 127.0.0.1 only and is bounded: `connections` sockets, one byte
each per `byte_every_s`, for at most `wait_close_s` after the last one opened.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sentiguard.chaos.floods import Answer, ask, ms, plain_payload, raise_own_nofile
from sentiguard.chaos.load import TEXTS

# How a slow connection ended, from what it read before the end.
CUT_408 = "408"
SHED_503 = "503"
NO_ANSWER = "closed_without_answer"
RESET = "reset"
OTHER = "other_answer"


def slow_header(port: int, body_bytes: int) -> bytes:
    return (
        f"POST /analyze HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {body_bytes}\r\n\r\n"
    ).encode("latin-1")


@dataclass
class SlowBodyResult:
    connections: int
    body_bytes: int
    byte_every_s: float
    wait_close_s: float
    opened: int = 0
    refused: int = 0  # connect() failed
    open_s: float = 0.0
    # How each connection closed by the server ended (CUT_408, ...), and its lifetime.
    ended: dict[str, int] = field(default_factory=dict)
    lifetimes_s: dict[str, list[float]] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)  # JSON error codes read
    survivors: int = 0  # still open at the wait's end, closed by this process
    bytes_sent: int = 0
    during: list[Answer] = field(default_factory=list)
    after: list[Answer] = field(default_factory=list)
    # New-client answers that came back before the server cut any slow body (408).
    answered_while_held: int = 0
    first_cut_at: float | None = None  # time.monotonic() of the first 408

    @property
    def closed_by_server(self) -> int:
        return sum(self.ended.values())

    def closed_within(self, seconds: float) -> int:
        return sum(1 for times in self.lifetimes_s.values() for t in times if t <= seconds)

    def summary(self) -> dict[str, Any]:
        def statuses(answers: list[Answer]) -> dict[str, int]:
            out: dict[str, int] = {}
            for a in answers:
                key = f"{a.status}" + ("+Retry-After" if a.retry_after else "")
                out[key] = out.get(key, 0) + 1
            return out

        lifetimes = [t for times in self.lifetimes_s.values() for t in times]
        return {
            "scenario": "slow_body",
            "connections": self.connections,
            "body_bytes": self.body_bytes,
            "byte_every_s": self.byte_every_s,
            "opened": self.opened,
            "refused_at_connect": self.refused,
            "open_s": round(self.open_s, 2),
            "closed_by_server": self.closed_by_server,
            f"closed_by_server_within_{self.wait_close_s:g}_s": self.closed_within(
                self.wait_close_s
            ),
            "ended": dict(sorted(self.ended.items())),
            "error_codes": self.error_codes,
            "lifetime_s": {
                kind: {
                    "min": round(min(times), 2),
                    "max": round(max(times), 2),
                }
                for kind, times in sorted(self.lifetimes_s.items())
                if times
            },
            "lifetime_s_max": round(max(lifetimes), 2) if lifetimes else None,
            "survivors": self.survivors,
            "bytes_sent": self.bytes_sent,
            "during": {**ms([a.elapsed_s for a in self.during]), **statuses(self.during)},
            "answered_while_held": self.answered_while_held,
            "after": {**ms([a.elapsed_s for a in self.after]), **statuses(self.after)},
        }


class _Slow:
    """One slow-body connection: its socket, when it opened, what it has read."""

    __slots__ = ("opened_at", "read", "sent", "sock")

    def __init__(self, sock: socket.socket, opened_at: float, sent: int) -> None:
        self.sock = sock
        self.opened_at = opened_at
        self.sent = sent
        self.read = b""


def _ending(read: bytes, reset: bool) -> str:
    if read.startswith(b"HTTP/1.1 408"):
        return CUT_408
    if read.startswith(b"HTTP/1.1 503"):
        return SHED_503
    if read:
        return OTHER
    return RESET if reset else NO_ANSWER


def _error_code(read: bytes) -> str | None:
    _, _, body = read.partition(b"\r\n\r\n")
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(body)["error"]["code"])
    return None


def _prober(port: int, every_s: float, stop: threading.Event, out: list[Answer]) -> None:
    body = json.dumps({"text": TEXTS[0]}, ensure_ascii=False).encode()
    while not stop.is_set():
        out.append(ask(port, "GET", "/health"))
        out.append(ask(port, "POST", "/analyze", body))
        stop.wait(every_s)


def slow_bodies(
    port: int,
    connections: int = 1000,
    body_bytes: int = 200_000,
    byte_every_s: float = 2.0,
    wait_close_s: float = 45.0,
    probe_every_s: float = 0.5,
    rounds_after: int = 3,
) -> SlowBodyResult:
    """Open `connections` slow-body connections, trickle a byte into each every
    `byte_every_s` while a prober asks as a new client every `probe_every_s`, and wait up to
    `wait_close_s` after the last open for the server to close them; close the rest, then
    ask `rounds_after` times more."""
    raise_own_nofile(connections + 256)
    result = SlowBodyResult(connections, body_bytes, byte_every_s, wait_close_s)
    header, payload = slow_header(port, body_bytes), plain_payload(body_bytes)
    stop = threading.Event()
    prober = threading.Thread(
        target=_prober, args=(port, probe_every_s, stop, result.during), daemon=True
    )
    sel = selectors.DefaultSelector()  # epoll: no 1024 ceiling
    start = time.monotonic()
    try:
        for _ in range(connections):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                result.refused += 1
                continue
            slow = _Slow(s, time.monotonic(), 1)
            with contextlib.suppress(OSError):  # shed or evicted: the watch sees how it ended
                s.sendall(header + payload[:1])
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, slow)
            result.opened += 1
            result.bytes_sent += len(header) + 1
        result.open_s = time.monotonic() - start
        prober.start()
        _watch(sel, result, payload, time.monotonic() + wait_close_s)
    finally:
        stop.set()
        if prober.is_alive():
            prober.join(30)
        result.survivors = len(sel.get_map())
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
    until = result.first_cut_at if result.first_cut_at is not None else float("inf")
    result.answered_while_held = sum(1 for a in result.during if a.sent_at + a.elapsed_s < until)
    body = json.dumps({"text": TEXTS[0]}, ensure_ascii=False).encode()
    for _ in range(rounds_after):
        result.after.append(ask(port, "GET", "/health"))
        result.after.append(ask(port, "POST", "/analyze", body))
    return result


def _watch(
    sel: selectors.BaseSelector, result: SlowBodyResult, payload: bytes, deadline: float
) -> None:
    next_byte = time.monotonic() + result.byte_every_s
    while sel.get_map() and time.monotonic() < deadline:
        timeout = max(0.0, min(0.2, next_byte - time.monotonic()))
        for key, _ in sel.select(timeout=timeout):
            slow: _Slow = key.data
            try:
                data = slow.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                _end(sel, result, slow, reset=True)
                continue
            if data:
                slow.read += data
            else:
                _end(sel, result, slow, reset=False)
        if time.monotonic() >= next_byte:
            next_byte += result.byte_every_s
            for key in list(sel.get_map().values()):
                slow = key.data
                if slow.sent >= len(payload) - 1:
                    continue  # never the whole body
                try:
                    result.bytes_sent += slow.sock.send(payload[slow.sent : slow.sent + 1])
                    slow.sent += 1
                except BlockingIOError:
                    pass
                except OSError:
                    # The server closed it: what it answered first may still be unread.
                    with contextlib.suppress(OSError):
                        slow.read += slow.sock.recv(65536)
                    _end(sel, result, slow, reset=True)


def _end(sel: selectors.BaseSelector, result: SlowBodyResult, slow: _Slow, reset: bool) -> None:
    now = time.monotonic()
    kind = _ending(slow.read, reset)
    result.ended[kind] = result.ended.get(kind, 0) + 1
    result.lifetimes_s.setdefault(kind, []).append(now - slow.opened_at)
    code = _error_code(slow.read)
    if code is not None:
        result.error_codes[code] = result.error_codes.get(code, 0) + 1
    if kind == CUT_408 and result.first_cut_at is None:
        result.first_cut_at = now
    sel.unregister(slow.sock)
    slow.sock.close()

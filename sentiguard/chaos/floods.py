"""Hostile-client scenarios against a running gateway: tests and bench/chaos.py share them.

- `hostile_body`: a body of the maximum size built to be slow to check (`{"text": "` then
  `\\"` again and again, never closed), POSTed several times while a prober keeps asking
  `/health` on new connections; the same size of plain letters is the side-by-side baseline.
- `flood`: thousands of connections that each send half a request header and stop, from
  this process (its RLIMIT_NOFILE raised); new clients ask meanwhile and after the server
  closed the flood (its header timeout), or after this process gave up and closed it.

Both return numbers; the tests assert ratios, orderings and the service's own promises,
the benchmark prints them.
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sentiguard.chaos.client import http_request
from sentiguard.chaos.load import TEXTS, Load

HALF_HEADER = b"POST /analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"
_TEXT_OPEN = b'{"text": "'


def hostile_payload(size: int) -> bytes:
    """`{"text": "` + `\\"` repeated to `size` bytes, never closed: every pair is an
    escaped quote, the worst case for a scan that restarts at each quote."""
    return _TEXT_OPEN + b'\\"' * ((size - len(_TEXT_OPEN)) // 2)


def plain_payload(size: int) -> bytes:
    """The same size and the same unclosed string, of letters only: the baseline."""
    return _TEXT_OPEN + b"a" * (size - len(_TEXT_OPEN))


@dataclass
class Answer:
    """One request of a new client: status (0: no answer), Retry-After, time to answer."""

    status: int
    retry_after: str | None
    elapsed_s: float
    code: str | None = None
    sent_at: float = 0.0


def ask(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10.0
) -> Answer:
    """One request on a new connection; failures are status 0, never an exception."""
    sent = time.monotonic()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        r = http_request(port, method, path, body, headers, timeout)
    except (OSError, ValueError) as e:
        return Answer(0, None, time.monotonic() - sent, type(e).__name__, sent)
    code = r.body.get("error", {}).get("code") if isinstance(r.body, dict) else None
    return Answer(r.status, r.headers.get("retry-after"), r.elapsed_s, code, sent)


def ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "max_ms": None}
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


@dataclass
class HostileBodyResult:
    size_bytes: int
    hostile: list[Answer] = field(default_factory=list)
    plain: list[Answer] = field(default_factory=list)
    health_before: list[Answer] = field(default_factory=list)
    health_during: list[Answer] = field(default_factory=list)
    # /health answers received while a hostile request was sent and not yet answered.
    answered_while_outstanding: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": "hostile_body",
            "size_bytes": self.size_bytes,
            "hostile_statuses": sorted({a.status for a in self.hostile}),
            "hostile_codes": sorted({str(a.code) for a in self.hostile}),
            "hostile_refusal": ms([a.elapsed_s for a in self.hostile]),
            "plain_refusal": ms([a.elapsed_s for a in self.plain]),
            "health_before": ms([a.elapsed_s for a in self.health_before]),
            "health_during": ms([a.elapsed_s for a in self.health_during]),
            "health_answered_while_outstanding": self.answered_while_outstanding,
        }


def hostile_body(port: int, size: int = 2_000_000, rounds: int = 5) -> HostileBodyResult:
    """POST the hostile body `rounds` times (and the plain one as often) while /health is
    asked again and again on new connections; /health is measured alone first."""
    result = HostileBodyResult(size)
    result.health_before = [ask(port, "GET", "/health") for _ in range(20)]
    stop = threading.Event()
    probes: list[Answer] = []

    def probe() -> None:
        while not stop.is_set():
            probes.append(ask(port, "GET", "/health"))

    prober = threading.Thread(target=probe, name="health-prober", daemon=True)
    prober.start()
    windows: list[tuple[float, float]] = []
    try:
        for _ in range(rounds):
            answer = ask(port, "POST", "/analyze", hostile_payload(size), timeout=30)
            result.hostile.append(answer)
            windows.append((answer.sent_at, answer.sent_at + answer.elapsed_s))
            result.plain.append(ask(port, "POST", "/analyze", plain_payload(size), timeout=30))
    finally:
        stop.set()
        prober.join(15)
    for p in probes:
        done = p.sent_at + p.elapsed_s
        if any(start < done and p.sent_at < end for start, end in windows):
            result.health_during.append(p)
        if any(start < done < end for start, end in windows):
            result.answered_while_outstanding += 1
    return result


def raise_own_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE toward `wanted` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass
class FloodResult:
    connections: int
    opened: int = 0
    open_s: float = 0.0
    during: list[Answer] = field(default_factory=list)
    after: list[Answer] = field(default_factory=list)
    closed_by_server: int = 0
    answered_503: int = 0  # flood connections answered 503 at once (server full)
    # Seconds from each connection's open to the server closing it.
    lifetimes_s: list[float] = field(default_factory=list)
    survivors: int = 0  # still open at the wait's end, closed by this process
    load_statuses: dict[int, int] = field(default_factory=dict)
    load_errors: dict[str, int] = field(default_factory=dict)  # status 0: what happened

    def summary(self) -> dict[str, Any]:
        def statuses(answers: list[Answer]) -> dict[str, int]:
            out: dict[str, int] = {}
            for a in answers:
                key = f"{a.status}" + ("+Retry-After" if a.retry_after else "")
                out[key] = out.get(key, 0) + 1
            return out

        return {
            "scenario": "flood",
            "connections": self.connections,
            "opened": self.opened,
            "open_s": round(self.open_s, 2),
            "during": {**ms([a.elapsed_s for a in self.during]), **statuses(self.during)},
            "after": {**ms([a.elapsed_s for a in self.after]), **statuses(self.after)},
            "closed_by_server": self.closed_by_server,
            "answered_503_at_once": self.answered_503,
            "lifetime_s_max": round(max(self.lifetimes_s), 2) if self.lifetimes_s else None,
            "survivors": self.survivors,
            "load_statuses": self.load_statuses,
            "load_errors": self.load_errors,
        }


def new_clients(port: int, rounds: int) -> list[Answer]:
    """`rounds` pairs of GET /health and POST /analyze, each on a new connection."""
    body = json.dumps({"text": TEXTS[0]}, ensure_ascii=False).encode()
    answers = []
    for _ in range(rounds):
        answers.append(ask(port, "GET", "/health"))
        answers.append(ask(port, "POST", "/analyze", body))
    return answers


def flood(
    port: int, connections: int, wait_close_s: float, rounds: int = 5, clients: int = 0
) -> FloodResult:
    """Open `connections` half-header connections, ask as a new client `rounds` times, wait
    up to `wait_close_s` for the server to close them, close the rest, ask again.
    `clients` closed-loop /analyze clients run throughout (their statuses are counted)."""
    raise_own_nofile(connections + 256)
    result = FloodResult(connections)
    load = Load(port, clients) if clients else None
    with load or contextlib.nullcontext():
        sel = selectors.DefaultSelector()  # epoll: no 1024 ceiling here either
        opened_at: dict[socket.socket, float] = {}
        start = time.monotonic()
        try:
            for _ in range(connections):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                opened_at[s] = time.monotonic()
                with contextlib.suppress(OSError):  # already shed or evicted
                    s.sendall(HALF_HEADER)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
            result.opened = len(opened_at)
            result.open_s = time.monotonic() - start
            result.during = new_clients(port, rounds)
            _watch_closes(sel, opened_at, result, time.monotonic() + wait_close_s)
        finally:
            result.survivors = len(sel.get_map())
            for key in list(sel.get_map().values()):
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()
        result.after = new_clients(port, rounds)
    if load is not None:
        for sample in load.snapshot():
            result.load_statuses[sample.status] = result.load_statuses.get(sample.status, 0) + 1
            if sample.error:
                kind = sample.error.split("(")[0]
                result.load_errors[kind] = result.load_errors.get(kind, 0) + 1
    return result


def _watch_closes(
    sel: selectors.BaseSelector,
    opened_at: dict[socket.socket, float],
    result: FloodResult,
    deadline: float,
) -> None:
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                result.answered_503 += 1
            if not data:
                result.closed_by_server += 1
                result.lifetimes_s.append(time.monotonic() - opened_at[s])
                sel.unregister(s)
                s.close()

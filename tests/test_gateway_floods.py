"""Issue 11, items 1-2: the gateway under hostile clients.

In-process: the connection budget's arithmetic, the server built on handed-in sockets,
serving past descriptor 1024 (poll, not select). Real gateway processes: a hostile body of
the maximum size, the JSON 413 a client still sending can read, a slowloris, floods of
half-open connections (under a lowered RLIMIT_NOFILE, and past descriptor 1024), and a
dying listener ending the process. The scenario drivers live in sentiguard/chaos/floods.py,
which bench/chaos.py runs at full size for docs/resilience.md.

No absolute times: timings are held to the gateway's own header timeout, to ratios measured
side by side, or to orderings (/health answered while the hostile request was outstanding).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from waitress import wasyncore
from waitress.server import MultiSocketServer

from sentiguard import settings as settings_mod
from sentiguard.chaos import floods
from sentiguard.chaos.client import http_request, wait_until
from sentiguard.chaos.ports import free_port
from sentiguard.chaos.service import run_gateway, service_env
from sentiguard.gateway.http_server import (
    BODY_MARGIN_BYTES,
    ConnectionBudget,
    build_public_server,
    listener_fault,
    listeners,
)

HEADER_TIMEOUT_S = 2.0
MAX_BODY = settings_mod.load(None, environ={}).gateway.max_body_bytes


def unchecked(**overrides: Any) -> settings_mod.Settings:
    return settings_mod.load(None, environ={}, overrides=overrides, check=False)


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Run `server` (its own `run()`, the poll loop) in a thread; stop it like waitress
    stops on SystemExit, from inside its loop, then close what is left."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        first = next(s for s in listeners(server) if s.socket is not None)

        def stop() -> bool:
            raise SystemExit

        first.readable = stop
        first.pull_trigger()
        thread.join(10)
        wasyncore.close_all(first._map, ignore_all=True)
        server.task_dispatcher.shutdown()


def get(port: int, path: str = "/health") -> int:
    return http_request(port, "GET", path, timeout=10).status


# --- in-process -------------------------------------------------------------------------


def test_connection_budget_leaves_room_for_pools_control_and_files() -> None:
    settings = unchecked()
    for nofile in (1024, 4096, 20000):
        budget = ConnectionBudget.for_settings(nofile, settings)
        # Two descriptors a connection (socket, spilled body) plus everything reserved fit.
        assert 2 * budget.connection_limit + budget.reserved <= nofile
        assert budget.reserved >= settings.gateway.threads * settings.primary.workers
    one, two = (
        ConnectionBudget.for_settings(20000, unchecked(**{"primary.workers": n})) for n in (1, 2)
    )
    # Each worker's client pool (one connection a gateway thread) comes out of the budget.
    assert one.connection_limit - two.connection_limit == settings.gateway.threads // 2


def test_server_on_handed_in_sockets_polls_and_bounds_the_body() -> None:
    settings = unchecked(**{"gateway.threads": 2})
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    server = build_public_server(hello, settings, sockets=socks)
    assert isinstance(server, MultiSocketServer)
    assert server.adj.asyncore_use_poll
    assert server.adj.max_request_body_size == MAX_BODY + BODY_MARGIN_BYTES < 2 * MAX_BODY
    assert server.adj.connection_limit == server.budget.connection_limit
    with serving(server):
        for sock in socks:
            assert get(sock.getsockname()[1]) == 200
        assert listener_fault(server) is None
        doomed = next(s for s in server.map.values() if getattr(s, "socket", None) is socks[0])
        doomed.close()
        assert "closed" in str(listener_fault(server))


def test_serves_connections_past_descriptor_1024() -> None:
    """select() raises "filedescriptor out of range" past 1024 and kills the loop."""
    soft = floods.raise_own_nofile(1400)
    if soft < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {soft} is too low to pass descriptor 1024")
    settings = unchecked(**{"gateway.threads": 2})
    listener = socket.create_server(("127.0.0.1", 0))
    server = build_public_server(hello, settings, sockets=[listener])
    filler = [os.dup(listener.fileno()) for _ in range(1100)]  # push new descriptors past 1024
    try:
        with serving(server):
            port = listener.getsockname()[1]
            held = socket.create_connection(("127.0.0.1", port))
            held.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held.recv(100).startswith(b"HTTP/1.1 200")
            assert max(server._map) > 1024
            assert get(port) == 200  # the loop still serves
            held.close()
    finally:
        for fd in filler:
            os.close(fd)


# --- real gateway processes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("gateway")
    with run_gateway(root, **{"gateway.header_timeout_s": HEADER_TIMEOUT_S}) as url:
        yield int(url.rsplit(":", 1)[1])


@contextlib.contextmanager
def gateway_process(
    root: Path, nofile: int | None = None, script: str | None = None, **overrides: Any
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """A gateway process (or `script` run like one) with its RLIMIT_NOFILE set to `nofile`;
    yields it, its port and its output file once /ready answers."""
    port = free_port()
    env = service_env(
        {
            "gateway.host": "127.0.0.1",
            "gateway.port": port,
            "gateway.header_timeout_s": HEADER_TIMEOUT_S,
            "primary.workers": 1,
            "primary.base_port": free_port(),
            "service.run_dir": str(root / "run"),
            "service.log_dir": str(root / "logs"),
            **overrides,
        }
    )
    argv = ["-c", script] if script else ["-m", "sentiguard.gateway"]

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    output = root / "gateway.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, output.read_text(errors="replace")[-3000:]
            return get(port, "/ready") == 200

        wait_until(ready, 90, "the gateway's /ready")
        yield proc, port, output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def logged(output: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in output.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and doc.get("event") == event:
                found.append(doc)
    return found


def answered(a: floods.Answer) -> bool:
    """A new client's answer the issue accepts: 200, or 503 with Retry-After."""
    return a.status == 200 or (a.status == 503 and a.retry_after is not None)


@pytest.mark.integration
@pytest.mark.slow
def test_hostile_body_is_refused_while_health_answers(gateway: int) -> None:
    result = floods.hostile_body(gateway, size=MAX_BODY, rounds=3)
    print(result.summary())
    for answer in result.hostile:
        assert 400 <= answer.status < 500 and answer.code, answer  # the JSON error shape
    # /health was answered while hostile requests were sent and not yet answered.
    assert result.answered_while_outstanding > 0, result.summary()
    # Checking is linear: the body built to be slow costs about what plain letters do.
    hostile = sorted(a.elapsed_s for a in result.hostile)[1]
    plain = sorted(a.elapsed_s for a in result.plain)[1]
    assert hostile <= 5 * plain, result.summary()


def _raw_post(port: int, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head)
    return s


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def _check_json_413(data: bytes) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data[:300]
    assert b"Content-Type: application/json" in head
    error = json.loads(body)["error"]
    assert error["code"] == "payload_too_large"
    assert str(MAX_BODY) in error["message"] and "Split" in error["message"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_413_in_json_is_readable_by_a_client_still_sending(gateway: int, framing: str) -> None:
    total = MAX_BODY + 1_000_000
    chunk = b"x" * 65536
    if framing == "content-length":
        head = f"Content-Length: {total}\r\n".encode()
        pieces = [chunk] * (total // len(chunk))
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        pieces = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (total // len(chunk))
    s = _raw_post(
        gateway,
        b"POST /analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head + b"\r\n",
    )
    with s:
        for piece in pieces:  # the whole body, long after the 413 was sent: no reset
            s.sendall(piece)
        s.shutdown(socket.SHUT_WR)
        _check_json_413(_read_all(s))


@pytest.mark.integration
@pytest.mark.slow
def test_413_comes_before_any_100_continue(gateway: int) -> None:
    s = _raw_post(
        gateway,
        b"POST /analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (10 * MAX_BODY),
    )
    with s:
        _check_json_413(_read_all(s))


@pytest.mark.integration
@pytest.mark.slow
def test_slowloris_trickling_a_header_is_closed_at_the_header_timeout(gateway: int) -> None:
    header = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    s = socket.create_connection(("127.0.0.1", gateway), timeout=1)
    opened = time.monotonic()
    sent = 0
    closed_at = None
    with s:
        while closed_at is None and time.monotonic() - opened < 4 * HEADER_TIMEOUT_S:
            try:
                s.sendall(header[sent : sent + 1])  # a byte every tenth of the timeout
                sent += 1
                with contextlib.suppress(TimeoutError):
                    s.settimeout(HEADER_TIMEOUT_S / 10)
                    if s.recv(100) == b"":
                        closed_at = time.monotonic()
            except OSError:
                closed_at = time.monotonic()
        assert get(gateway) == 200  # a whole header meanwhile is served
    assert closed_at is not None, "the trickling connection outlived 4 header timeouts"
    lived = closed_at - opened
    assert HEADER_TIMEOUT_S <= lived <= 2 * HEADER_TIMEOUT_S, lived


@pytest.mark.integration
@pytest.mark.slow
def test_keep_alive_connection_outlives_the_header_timeout(gateway: int) -> None:
    """Idle between requests is keep-alive, not a header that never came."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway, timeout=10)
    sockets = set()
    start = time.monotonic()
    with contextlib.closing(conn):
        while time.monotonic() - start < 3 * HEADER_TIMEOUT_S:
            conn.request("GET", "/health")
            assert conn.getresponse().read() and conn.sock is not None
            sockets.add(id(conn.sock))
            # Idle longer than a loop pass waits (1 s), so maintenance sees the channel idle.
            time.sleep(0.6 * HEADER_TIMEOUT_S)
    assert len(sockets) == 1  # one connection all along


@pytest.mark.integration
@pytest.mark.slow
def test_flood_under_a_lowered_descriptor_limit(tmp_path: Path) -> None:
    with gateway_process(tmp_path, nofile=512) as (proc, port, output):
        limit = logged(output, "gateway_started")[0]["connection_limit"]
        connections = 300
        assert limit < connections  # the flood is more than the gateway may hold
        result = floods.flood(port, connections, wait_close_s=3 * HEADER_TIMEOUT_S, rounds=3)
        summary = result.summary()
        print(limit, summary, logged(output, "connection_limit_full")[:3])
        assert result.opened == connections, summary
        # A new client is answered, and before the header timeout.
        assert all(answered(a) for a in result.during), summary
        assert max(a.elapsed_s for a in result.during) < HEADER_TIMEOUT_S, summary
        # The server closed every half-open connection itself, within its header timeout
        # (plus its maintenance pass, at most a quarter of it, and one loop pass).
        assert result.closed_by_server == connections and result.survivors == 0, summary
        assert max(result.lifetimes_s) <= 2 * HEADER_TIMEOUT_S, summary
        assert all(a.status == 200 for a in result.after), summary
        assert proc.poll() is None


@pytest.mark.integration
@pytest.mark.slow
def test_full_of_requests_under_way_a_new_client_gets_503_with_retry_after(
    tmp_path: Path,
) -> None:
    with gateway_process(tmp_path, nofile=512) as (_proc, port, output):
        limit = logged(output, "gateway_started")[0]["connection_limit"]
        # Whole headers, bodies still to come: requests under way, which nothing evicts
        # (one accepted before its header was read can be, so top up until the gateway
        # is full of them).
        busy: list[socket.socket] = []

        def full() -> floods.Answer | None:
            assert len(busy) < 5 * limit, "the gateway never filled up"
            for _ in range(10):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"POST /analyze HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{")
                busy.append(s)
            answer = floods.ask(port, "GET", "/health")
            return answer if answer.status != 200 else None

        try:
            shed = wait_until(full, 30, "a new client answered 503", 0.01)
            assert shed.status == 503 and shed.retry_after and shed.code == "overloaded", shed
        finally:
            for s in busy:
                s.close()
        wait_until(lambda: floods.ask(port, "GET", "/health").status == 200, 10, "a 200")


@pytest.mark.integration
@pytest.mark.slow
def test_flood_past_descriptor_1024(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low to pass descriptor 1024")
    with gateway_process(tmp_path) as (proc, port, _output):
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            gateway = psutil.Process(proc.pid)
            while not stop.wait(0.05):
                with contextlib.suppress(psutil.Error):
                    peak[0] = max(peak[0], gateway.num_fds())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = floods.flood(port, 1200, wait_close_s=3 * HEADER_TIMEOUT_S, rounds=2)
        finally:
            stop.set()
            sampler.join(5)
        summary = result.summary()
        print(peak[0], summary)
        assert peak[0] > 1024, f"the gateway never held 1024 descriptors: {peak[0]}"
        assert all(a.status == 200 for a in result.during + result.after), summary
        assert result.closed_by_server == 1200 and proc.poll() is None, summary


# Runs the gateway like `python -m sentiguard.gateway`, and on SIGUSR1 breaks its public
# listener the way argv[1] says: the serving loop raises, or the listening socket closes.
BREAK_LISTENER = """
import signal, sys
from sentiguard.gateway import process
from sentiguard.logs import exit_now

def boom():
    raise RuntimeError("injected fault in the serving loop")

original = process.GatewayProcess.run

def run(self):
    def fault(*_):
        if sys.argv[1] == "loop_raises":
            self.public.readable = boom
            self.public.pull_trigger()
        else:
            self.public.close()
    signal.signal(signal.SIGUSR1, fault)
    return original(self)

process.GatewayProcess.run = run
exit_now(process.main())
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    "how, cause",
    [("loop_raises", "injected fault"), ("listener_closed", "listening socket")],
)
def test_a_dead_listener_ends_the_process(tmp_path: Path, how: str, cause: str) -> None:
    script = BREAK_LISTENER.replace("sys.argv[1]", repr(how))
    with gateway_process(tmp_path, script=script) as (proc, _port, output):
        os.kill(proc.pid, signal.SIGUSR1)
        code = proc.wait(30)
        assert code != 0
        died = logged(output, "listener_died")
        assert died and cause in died[0]["reason"], output.read_text(errors="replace")[-2000:]

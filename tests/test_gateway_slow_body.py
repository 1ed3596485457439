"""Issue 16, item 4: a request body slower than the gateway allows is cut with a JSON 408.

Real gateway processes on 127.0.0.1, with small settings so the rule shows in seconds: a
body may take `GRACE_S` from its header's end plus 1 s per `MIN_RATE` bytes received. A
body trickling below that rate (Content-Length or chunked) is answered 408 in the one error
shape and closed; a body sent slowly but above the rate, for longer than the grace, is
served; a fast POST is unaffected; new clients are answered while slow bodies are held,
also when they fill the gateway's connection limit (503 at once, 200 once they are cut).
The many-connection drivers live in sentiguard/chaos/slow_bodies.py, which bench/chaos.py
runs at full size.

No absolute times: lifetimes are held to the gateway's own settings (never cut before the
grace; cut within a few graces, room for its maintenance pass and a loop pass) and to
orderings (answered while every slow body was still open).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentiguard.chaos import slow_bodies
from sentiguard.chaos.client import http_request, post_json, wait_until
from sentiguard.chaos.service import run_gateway
from tests.test_gateway_floods import gateway_process, logged

GRACE_S = 1.5
MIN_RATE = 200  # bytes/s
TRICKLE_S = 0.2  # one piece of body every this: 5-30 bytes/s, far below MIN_RATE
# A cut comes after the grace (plus 1 s per MIN_RATE bytes received), the maintenance pass
# that finds it (a quarter of the grace at most) and one pass of the serving loop (1 s at
# most): 3 graces and a pass leave room for a loaded machine.
CUT_WITHIN_S = 3 * GRACE_S + 1.0
SETTINGS = {"gateway.body_timeout_s": GRACE_S, "gateway.body_min_bytes_per_s": MIN_RATE}
HEAD = b"POST /analyze HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("slow-body")
    with run_gateway(root, **SETTINGS) as url:
        yield int(url.rsplit(":", 1)[1])


def trickle(port: int, head: bytes, pieces: Iterator[bytes], every_s: float) -> tuple[bytes, float]:
    """Send `head`, then a piece every `every_s` until the server closes (or 4 x the cut
    deadline); return what was read and the seconds from the header to the close."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    read = b""
    with s:
        s.sendall(head)
        sent_at = time.monotonic()
        while time.monotonic() - sent_at < 4 * CUT_WITHIN_S:
            try:
                s.settimeout(every_s)
                data = s.recv(65536)
            except TimeoutError:
                with contextlib.suppress(OSError):
                    s.sendall(next(pieces))
                continue
            except OSError:
                break  # reset after the server's close
            if not data:
                break
            read += data
        return read, time.monotonic() - sent_at


def chunks(piece: bytes) -> Iterator[bytes]:
    while True:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)


def letters() -> Iterator[bytes]:
    while True:
        yield b"a"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_slow_body_is_answered_408_in_json_and_closed(gateway: int, framing: str) -> None:
    if framing == "content-length":
        head, pieces = HEAD + b"Content-Length: 10000\r\n\r\n{", letters()
    else:
        head, pieces = HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunks(b"a")
    read, lived = trickle(gateway, head, pieces, TRICKLE_S)
    status, _, body = read.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), read[:300]
    assert b"Content-Type: application/json" in status and b"Connection: close" in status
    error = json.loads(body)["error"]
    assert error["code"] == "body_too_slow"
    # What to do next: send faster, or which settings the operator changes.
    message = error["message"]
    assert "faster" in message and "gateway.body_timeout_s" in message, message
    assert "gateway.body_min_bytes_per_s" in message, message
    # Closed by the server (read to its end), never before the grace, within the deadline.
    assert GRACE_S <= lived <= CUT_WITHIN_S, lived


@pytest.mark.integration
@pytest.mark.slow
def test_body_above_the_min_rate_is_served_however_long_it_takes(gateway: int) -> None:
    rate = 3 * MIN_RATE
    doc = json.dumps({"text": "这家店很好"}, ensure_ascii=False).encode()
    body = b" " * int(rate * 2.5 * GRACE_S) + doc  # leading whitespace is valid JSON
    s = socket.create_connection(("127.0.0.1", gateway), timeout=10)
    with s:
        s.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body))
        start = time.monotonic()
        sent = 0
        while sent < len(body):
            # Paced on the clock: a late wake-up sends what is due, so the client keeps
            # its rate even on a loaded machine.
            due = min(len(body), int(rate * (time.monotonic() - start)) + 1)
            s.sendall(body[sent:due])
            sent = due
            time.sleep(0.05)
        took = time.monotonic() - start
        s.shutdown(socket.SHUT_WR)
        read = b""
        while chunk := s.recv(65536):
            read += chunk
    assert took > 2 * GRACE_S, took  # longer than the grace alone would allow
    status, _, answer = read.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), read[:300]
    assert json.loads(answer)["label"] == "positive"


@pytest.mark.integration
@pytest.mark.slow
def test_fast_post_is_unaffected(gateway: int) -> None:
    answer = post_json(gateway, "/analyze", {"text": "这家店很好"})
    assert answer.status == 200 and answer.body["label"] == "positive", answer
    # A body of a megabyte, sent at once: read far faster than the floor, never a 408.
    doc = json.dumps({"text": "这家店很好"}, ensure_ascii=False).encode()
    big = b" " * 1_000_000 + doc
    answer = http_request(
        gateway, "POST", "/analyze", big, {"Content-Type": "application/json"}, timeout=30
    )
    assert answer.status == 200 and answer.body["label"] == "positive", answer


@pytest.mark.integration
@pytest.mark.slow
def test_new_clients_are_answered_while_slow_bodies_are_held(gateway: int) -> None:
    result = slow_bodies.slow_bodies(
        gateway,
        connections=50,
        body_bytes=10_000,
        byte_every_s=TRICKLE_S,
        wait_close_s=4 * CUT_WITHIN_S,
        probe_every_s=0.05,
    )
    summary = result.summary()
    print(summary)
    assert result.opened == 50 and result.refused == 0, summary
    # Every new client answered, some of them while every slow body was still open.
    assert result.during and all(a.status == 200 for a in result.during), summary
    assert result.answered_while_held > 0, summary
    # Every slow body cut by the gateway with its JSON 408, within the deadline.
    assert result.ended == {slow_bodies.CUT_408: 50}, summary
    assert result.error_codes == {"body_too_slow": 50}, summary
    lifetimes = result.lifetimes_s[slow_bodies.CUT_408]
    assert min(lifetimes) >= GRACE_S and max(lifetimes) <= CUT_WITHIN_S + result.open_s, summary
    assert result.survivors == 0 and all(a.status == 200 for a in result.after), summary


@pytest.mark.integration
@pytest.mark.slow
def test_slow_bodies_filling_the_connection_limit(tmp_path: Path) -> None:
    """Slow bodies are requests under way: nothing evicts them, so a gateway full of them
    answers a newcomer 503 with Retry-After at once; the body rule then frees the slots."""
    grace_s = 4.0  # long enough to fill the gateway and ask before any cut
    overrides: dict[str, Any] = {
        "gateway.body_timeout_s": grace_s,
        "gateway.body_min_bytes_per_s": MIN_RATE,
    }
    with gateway_process(tmp_path, nofile=512, **overrides) as (proc, port, output):
        limit = logged(output, "gateway_started")[0]["connection_limit"]
        connections = limit + 16  # past the limit, within its immediate-503 reserve
        result = slow_bodies.slow_bodies(
            port,
            connections=connections,
            body_bytes=10_000,
            byte_every_s=0.5,
            wait_close_s=4 * grace_s + 2.0,
            probe_every_s=0.2,
        )
        summary = result.summary()
        print(limit, summary, logged(output, "body_timeout")[:3])
        assert result.opened == connections and result.refused == 0, summary
        # While full of slow bodies, a newcomer is answered at once, never left waiting.
        held = [a for a in result.during if a.sent_at + a.elapsed_s < (result.first_cut_at or 0)]
        assert held and all(a.status in (200, 503) for a in held), summary
        assert any(a.status == 503 and a.retry_after for a in held), summary
        # The server closed every slow connection itself: 408 for the bodies it held, 503
        # at once for those past its limit (or closed before their header was read).
        assert result.survivors == 0 and result.closed_by_server == connections, summary
        assert set(result.ended) <= {
            slow_bodies.CUT_408,
            slow_bodies.SHED_503,
            slow_bodies.NO_ANSWER,
        }, summary
        assert result.ended.get(slow_bodies.CUT_408, 0) >= limit // 2, summary
        assert min(result.lifetimes_s[slow_bodies.CUT_408]) >= grace_s, summary
        assert logged(output, "body_timeout"), "no body_timeout logged"
        # Once they are cut, a newcomer is served again.
        wait_until(lambda: http_request(port, "GET", "/health").status == 200, 10, "a 200")
        assert proc.poll() is None


def test_the_api_description_documents_the_408() -> None:
    from sentiguard.gateway.openapi import spec
    from sentiguard.settings import load

    responses = spec(load(None, environ={}, overrides={}))["paths"]["/analyze"]["post"]["responses"]
    assert "body_too_slow" in responses["408"]["description"]
    assert "gateway.body_timeout_s" in responses["408"]["description"]

"""HTTP to the service on 127.0.0.1, and waiting for a condition to a deadline.

A wait never hopes: `wait_until` polls a condition and, at its deadline, fails with an
AssertionError naming what it waited for (a test shows it as the failure's reason).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None],
    timeout: float = 20.0,
    what: str = "the condition",
    interval: float = 0.1,
) -> T:
    """Poll `check` until it returns something truthy; AssertionError naming `what` on timeout."""
    end = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, http.client.HTTPException) as e:
            last_error = e
        if time.monotonic() > end:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(interval)


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]
    elapsed_s: float


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One HTTP request to 127.0.0.1:port; the body parsed as JSON when it is JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(data) if data else None
    except ValueError:
        parsed = data.decode("utf-8", "replace")
    return Response(
        response.status,
        parsed,
        {k.lower(): v for k, v in response.getheaders()},
        time.monotonic() - start,
    )


def post_json(port: int, path: str, doc: Any, timeout: float = 10.0) -> Response:
    return http_request(
        port,
        "POST",
        path,
        json.dumps(doc, ensure_ascii=False).encode(),
        {"Content-Type": "application/json"},
        timeout,
    )


def answered_total(port: int) -> float:
    """Every /analyze request the gateway has answered, from its own /metrics counter."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode("utf-8", "replace")
    finally:
        conn.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sentiguard_requests_total{")
    )

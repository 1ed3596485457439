"""Closed-loop HTTP load for the chaos scenarios: N clients, each POSTing back to back.

The clients run as threads in a few child processes (at most `PER_PROCESS` each), not all in
the caller's process: 64 threads behind one GIL add their own queueing to every latency
they measure (measured: client-side p99 ~520 ms with 64 threads in one process against
~440 ms with 4 processes of 16, same service, same machine). Samples carry
`time.monotonic()` starts, one clock for every process on Linux, so a scenario can place
them against the moment it injected a fault.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import multiprocessing
import os
import random
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from typing import Any

TEXTS = (
    "这家店的菜很好吃，服务也热情，下次还来。",
    "质量太差了，用了两天就坏了，非常失望。",
    "物流很快，包装完好，和描述的一样。",
    "客服态度恶劣，退货也不给退。",
    "房间干净整洁，位置方便，性价比很高。",
    "等了一个小时还没上菜，再也不来了。",
)
PER_PROCESS = 16
START_TIMEOUT_S = 60.0


@dataclass
class Sample:
    """One request as a client saw it."""

    start: float  # time.monotonic()
    latency_s: float
    status: int  # 0: no HTTP answer at all (connection error, timeout)
    model: str | None = None
    reason: str | None = None
    retry_after: str | None = None
    error: str | None = None
    server_ms: float | None = None  # the answer's own latency_ms (inside the gateway)


def _client(
    port: int,
    index: int,
    timeout_s: float,
    stop: threading.Event,
    extra_headers: dict[str, str] | None = None,
) -> list[Sample]:
    """One closed-loop client over a kept-alive connection until `stop` is set."""
    rng = random.Random(index)
    samples: list[Sample] = []
    conn: http.client.HTTPConnection | None = None
    headers = {"Content-Type": "application/json", **(extra_headers or {})}
    while not stop.is_set():
        body = json.dumps({"text": rng.choice(TEXTS)}, ensure_ascii=False).encode()
        start = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
            conn.request("POST", "/analyze", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            sample = Sample(start, time.monotonic() - start, response.status)
            sample.retry_after = response.getheader("Retry-After")
            with contextlib.suppress(ValueError):
                doc = json.loads(data)
                if isinstance(doc, dict):
                    sample.model, sample.reason = doc.get("model"), doc.get("reason")
                    sample.server_ms = doc.get("latency_ms")
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            sample = Sample(start, time.monotonic() - start, 0, error=repr(e))
            if conn is not None:
                conn.close()
            conn = None
        samples.append(sample)
    if conn is not None:
        conn.close()
    return samples


CLIENT_NICE = 5


def _process(
    port: int,
    first: int,
    count: int,
    timeout_s: float,
    stop: EventType,
    started: Any,
    results: Any,
    headers: dict[str, str] | None = None,
) -> None:
    """A child process: `count` client threads until the parent sets `stop` (or dies)."""
    # Real clients run on other machines; here they share the service's two cores. At a
    # lower priority they still keep every connection busy, but the CPU they take from the
    # gateway shows less in the latency measured.
    os.nice(CLIENT_NICE)
    parent = os.getppid()
    local_stop = threading.Event()
    out: list[list[Sample]] = [[] for _ in range(count)]

    def run(i: int) -> None:
        out[i] = _client(port, first + i, timeout_s, local_stop, headers)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    started.put(first)
    # A parent killed without stopping us must not leave clients hammering the port.
    while not stop.wait(0.5) and os.getppid() == parent:
        pass
    local_stop.set()
    for t in threads:
        t.join(timeout_s + 5)
    results.put([s for samples in out for s in samples])


class Load:
    """`clients` closed-loop clients POSTing /analyze to 127.0.0.1:`port` until stopped.

    `headers` go with every request (e.g. a client-shortened `X-Deadline-Ms`).

    Use as a context manager; the clients are all sending when `__enter__` returns, and
    `snapshot()` (after `stop()`) returns every sample.
    """

    def __init__(
        self,
        port: int,
        clients: int,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.clients = clients
        self.timeout_s = timeout_s
        self.samples: list[Sample] = []
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded test process
        self._stop = ctx.Event()
        self._started = ctx.Queue()
        self._results = ctx.Queue()
        groups = max(1, math.ceil(clients / PER_PROCESS))
        sizes = [clients // groups + (1 if i < clients % groups else 0) for i in range(groups)]
        firsts = [sum(sizes[:i]) for i in range(groups)]
        self._procs = [
            ctx.Process(
                target=_process,
                args=(
                    port,
                    first,
                    size,
                    timeout_s,
                    self._stop,
                    self._started,
                    self._results,
                    headers,
                ),
                daemon=True,
            )
            for first, size in zip(firsts, sizes, strict=True)
            if size
        ]
        self._stopped = False

    def __enter__(self) -> Load:
        try:
            for p in self._procs:
                p.start()
            for _ in self._procs:
                self._started.get(timeout=START_TIMEOUT_S)
        except BaseException:
            self._stop.set()
            for p in self._procs:
                if p.is_alive():
                    p.kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every client and collect the samples (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        deadline = time.monotonic() + self.timeout_s + 30
        for _ in self._procs:
            left = max(1.0, deadline - time.monotonic())
            self.samples.extend(self._results.get(timeout=left))
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        self.samples.sort(key=lambda s: s.start)
        self._started.close()
        self._results.close()

    def snapshot(self) -> list[Sample]:
        self.stop()
        return list(self.samples)

"""Micro-batching: coalesce concurrent requests into forward passes, `lanes` at a time.

HTTP threads call `Batcher.submit(texts)` and block. Each lane (a thread) takes the first
waiting request, waits up to `max_wait_ms` for more (or until `max_batch_size` texts are
gathered), runs them through `predict` as one list, and hands each caller its own slice
in input order. A lane waits only when requests are concurrent (its last batch held more
than one, or more are queued): a lone client is never delayed by the wait. An exception
from `predict` goes to the callers of that batch only; the next batch runs as usual.

Lanes: with two cores, two lanes each running a batch on one torch thread beat one lane
running it on a two-thread intra-op pool (measured 342-419 vs 230-360 texts/s on 16-text
batches of the embedded model): torch's Python glue between operators runs on one core
while the other computes, and no OpenMP team waits on its slowest member. `predict` must
therefore be safe to call from `lanes` threads at once.

An `urgent` request (the /health probe) goes ahead of every queued one, so under load it
waits for a batch in progress only: a busy worker is not mistaken for a hung one.

Deadlines: a request's `timeout` is the time its caller has left (the gateway's
X-Deadline-Ms). A lane drops, unrun, a request whose time passed before its batch starts
(its caller gets `DeadlinePassed`) or whose caller stopped waiting (`abandoned`): with a
base-size model a batch costs seconds, and computing answers nobody reads would push
every request behind them past its deadline too. The urgent probe is never dropped.
What the lanes did is counted in a `Progress` (progress.py) that /live reads.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sentiguard.primary.progress import Progress

if TYPE_CHECKING:
    from sentiguard.settings import Settings

T = TypeVar("T")

# Every wait of the loop is bounded so a stop request is seen within this many seconds.
TICK_S = 0.5


class BatcherStopped(Exception):
    """The batcher is stopping and takes no new work."""


class DeadlinePassed(TimeoutError):
    """The request's time ran out before its batch started; it was dropped unrun.

    A TimeoutError, so a caller that treats "no answer in time" as one case can."""


@dataclass
class _Request(Generic[T]):
    texts: Sequence[str]
    deadline: float | None = None  # monotonic; None: never dropped (the urgent probe)
    abandoned: bool = False  # set by the caller when it stops waiting
    future: Future[list[T]] = field(default_factory=Future)


# A queue entry: (0 urgent | 1 normal, arrival number, request), so urgent first, else
# arrival order; a request put back keeps its entry, hence its place.
_Entry = tuple[int, int, _Request[Any]]


@dataclass
class _Lane:
    last_batch_requests: int = 0


class Batcher(Generic[T]):
    """`lanes` threads that run `predict` over batches of concurrently submitted texts.

    `predict(texts)` must return one result per text, in order. A single request larger
    than `max_batch_size` is run on its own (the model splits it further).
    """

    def __init__(
        self,
        predict: Callable[[list[str]], list[T]],
        max_batch_size: int,
        max_wait_ms: float,
        lanes: int = 1,
        progress: Progress | None = None,
    ) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.progress = progress if progress is not None else Progress()
        self._queue: queue.PriorityQueue[_Entry] = queue.PriorityQueue()
        self._arrivals = itertools.count()
        self._lanes = [_Lane() for _ in range(lanes)]
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self.run, args=(lane,), name=f"batcher-{i}", daemon=True)
            for i, lane in enumerate(self._lanes)
        ]

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    @property
    def batches(self) -> int:
        return self.progress.batches

    @property
    def texts(self) -> int:
        return self.progress.texts

    @property
    def queued(self) -> int:
        """Requests waiting for a lane (those abandoned but not yet skipped included)."""
        return self._queue.qsize()

    def snapshot(self) -> dict[str, Any]:
        """The lanes' progress for /live: counters only, never waits on a batch."""
        return self.progress.snapshot(self.queued)

    def start(self) -> Batcher[T]:
        for thread in self._threads:
            thread.start()
        return self

    def submit(
        self, texts: Sequence[str], timeout: float | None = None, urgent: bool = False
    ) -> list[T]:
        """Predict `texts` in a shared batch; block until answered (or raise its error).

        `timeout` is the time the caller has left: past it the caller gets a TimeoutError
        and its request is abandoned (a lane skips it); a request still queued when it
        passes is dropped with `DeadlinePassed`. `urgent` puts the request ahead of all
        queued ones (not of the batches running), and it is never dropped.
        """
        if self._stopping.is_set():
            raise BatcherStopped("the worker is shutting down")
        if not texts:
            return []
        request: _Request[T] = _Request(list(texts))
        if not urgent and timeout is not None:
            if timeout <= 0:
                self.progress.dropped()
                raise DeadlinePassed("the deadline passed before the request was queued")
            request.deadline = time.monotonic() + timeout
        self._queue.put((0 if urgent else 1, next(self._arrivals), request))
        try:
            return request.future.result(timeout)
        except TimeoutError:
            # Nobody reads an answer now: let the lane that reaches it skip it.
            request.abandoned = request.deadline is not None
            raise

    def stop(self, timeout: float) -> None:
        """Finish queued work until `timeout`, then fail whatever is left."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for request in self._drain_queue():
            request.future.set_exception(BatcherStopped("the worker is shutting down"))

    def run(self, lane: _Lane) -> None:
        while True:
            batch = self._next_batch(lane)
            if batch:
                self._run_batch(lane, batch)
            elif self._stopping.is_set():
                return

    def _next_batch(self, lane: _Lane) -> list[_Request[T]]:
        entry = self._take(TICK_S)
        if entry is None:
            return []
        first = entry[-1]
        batch, size = [first], len(first.texts)
        if lane.last_batch_requests <= 1 and self._queue.empty():
            # No concurrency seen: waiting for company would only add max_wait_ms to a
            # lone client's latency. Requests arriving during this pass form the next batch.
            return batch
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size:
            entry = self._take(deadline - time.monotonic())
            if entry is None:
                break
            request = entry[-1]
            if size + len(request.texts) > self.max_batch_size:
                # Back in its place: the next free lane (maybe another one, idle now)
                # takes it first, rather than it waiting for this lane's batch to end.
                self._queue.put(entry)
                break
            batch.append(request)
            size += len(request.texts)
        return batch

    def _take(self, wait_s: float) -> _Entry | None:
        """The next queued request still wanted, waiting up to `wait_s`; None if none."""
        until = time.monotonic() + wait_s
        while True:
            left = until - time.monotonic()
            try:
                entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if self._wanted(entry[-1], time.monotonic()):
                return entry

    def _wanted(self, request: _Request[T], now: float) -> bool:
        """False (and counted as dropped) when nobody will read the request's answer."""
        if request.deadline is None:
            return True
        if request.abandoned:
            self.progress.dropped()
            return False
        if now >= request.deadline:
            request.future.set_exception(
                DeadlinePassed("the deadline passed while the request waited for a batch")
            )
            self.progress.dropped()
            return False
        return True

    def _run_batch(self, lane: _Lane, batch: list[_Request[T]]) -> None:
        # Checked again here: gathering company took up to max_wait_ms.
        now = time.monotonic()
        batch = [request for request in batch if self._wanted(request, now)]
        if not batch:
            return
        texts = [t for request in batch for t in request.texts]
        lane.last_batch_requests = len(batch)
        token = self.progress.started()
        try:
            results = self.predict(texts)
            if len(results) != len(texts):
                raise RuntimeError(
                    f"predict returned {len(results)} results for {len(texts)} texts"
                )
        except BaseException as e:  # each caller of this batch gets the error, nobody else
            self.progress.finished(token, len(texts))
            for request in batch:
                request.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        self.progress.finished(token, len(texts))
        start = 0
        for request in batch:
            end = start + len(request.texts)
            request.future.set_result(results[start:end])
            start = end

    def _drain_queue(self) -> list[_Request[T]]:
        left = []
        while True:
            try:
                left.append(self._queue.get_nowait()[-1])
            except queue.Empty:
                return left


def batch_lanes(settings: Settings) -> int:
    """primary.batch_lanes, or (0) this worker's share of the CPUs it may run on."""
    lanes: int = settings.primary.batch_lanes
    if lanes:
        return lanes
    return max(1, len(os.sched_getaffinity(0)) // settings.primary.workers)

"""Fault injection for tests: make a worker leak, hang, slow down, stall or crash on request.

Served as `POST /_fault` on the worker's loopback port only when `faults.enabled`; with it
off the route does not exist (404). Each fault imitates the real failure as the watchdog
would see it from outside:

- leak {"mb": N}: allocate N MB, write every page so it counts in RSS/USS, keep it.
- hang {"seconds": S}: every request, /health included, blocks until S passes, and
  SIGTERM is ignored meanwhile, as in a process stuck in a C call; only SIGKILL ends it.
- slow {"ms": M}: every forward pass (predictions and the health probe) takes M ms more.
- stall {"seconds": S}: every forward pass blocks for S seconds, while the HTTP threads
  keep answering (/live, /ready at once): a worker that accepts work and makes no
  progress, as one stuck in a native call that holds no lock the server needs. S = 0 ends
  it, and releases the passes stalled at that moment too.
- crash: the process exits at once with CRASH_EXIT_CODE, not MODEL_LOAD_ERROR (4), so a
  supervisor sees a crash, not "cannot start".
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sentiguard.errors import BadRequest, ExitCode

T = TypeVar("T")

CRASH_EXIT_CODE = 70  # EX_SOFTWARE from sysexits.h
assert CRASH_EXIT_CODE != ExitCode.MODEL_LOAD_ERROR
PAGE = 4096
LEAK_STEP_MB = 16
LIMITS = {"mb": 65536, "seconds": 3600, "ms": 60000}
KINDS = ("leak", "hang", "slow", "stall", "crash")
NUMBER = {"leak": "mb", "hang": "seconds", "slow": "ms", "stall": "seconds"}
# How often a stalled pass looks whether the stall was lifted.
STALL_CHECK_S = 0.05


class Faults:
    """The faults currently injected into this worker. Thread-safe."""

    def __init__(self, log: Callable[..., None]) -> None:
        self.log = log
        self._leaked: list[mmap.mmap] = []
        self._hang_until = 0.0
        self._slow_s = 0.0
        self._stall_s = 0.0
        self._lock = threading.Lock()

    @property
    def leaked_mb(self) -> int:
        return sum(len(b) for b in self._leaked) // (1024 * 1024)

    def hanging(self) -> bool:
        return time.monotonic() < self._hang_until

    def gate(self) -> None:
        """Block the calling request while a hang is injected."""
        while (left := self._hang_until - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))

    def slowed(self, predict: Callable[[list[str]], T]) -> Callable[[list[str]], T]:
        """`predict` with the injected slowness added to each call."""

        def run(texts: list[str]) -> T:
            if self._slow_s > 0:
                time.sleep(self._slow_s)
            self._stall()
            return predict(texts)

        return run

    def inject(self, body: Any) -> dict[str, Any]:
        """Apply one fault from a request body; raise BadRequest naming what was wrong."""
        if not isinstance(body, dict) or body.get("kind") not in KINDS:
            raise BadRequest(
                'body must be {"kind": "leak"|"hang"|"slow"|"stall"|"crash", ...}, e.g. '
                '{"kind": "leak", "mb": 100}'
            )
        kind = body["kind"]
        if kind == "crash":
            self.log("fault_injected", kind=kind, exit_code=CRASH_EXIT_CODE)
            # Let the answer leave first, then die without cleanup like a real crash.
            threading.Timer(0.05, os._exit, args=(CRASH_EXIT_CODE,)).start()
            return {"kind": kind, "exit_code": CRASH_EXIT_CODE}
        key = NUMBER[kind]
        value = body.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= LIMITS[key]
        ):
            raise BadRequest(f"{kind} needs {key!r}: a number from 0 to {LIMITS[key]}")
        with self._lock:
            if kind == "leak":
                self._leak(int(value))
            elif kind == "hang":
                self._hang_until = time.monotonic() + float(value)
            elif kind == "stall":
                self._stall_s = float(value)
            else:
                self._slow_s = float(value) / 1000.0
        self.log("fault_injected", kind=kind, **{key: value}, leaked_mb=self.leaked_mb)
        return {"kind": kind, key: value, "leaked_mb": self.leaked_mb}

    def _stall(self) -> None:
        """Block this pass for the injected stall, or until the stall is lifted."""
        if self._stall_s <= 0:
            return
        until = time.monotonic() + self._stall_s
        while self._stall_s > 0 and (left := until - time.monotonic()) > 0:
            time.sleep(min(left, STALL_CHECK_S))

    def _leak(self, mb: int) -> None:
        # In 16 MB blocks with a GIL release between them: one huge write would stall the
        # worker's serving threads for seconds, a hang the leak fault is not meant to be.
        for offset in range(0, mb, LEAK_STEP_MB):
            # An anonymous mapping of its own: a bytearray of 16 MB can come from malloc's
            # heap and reuse memory the process freed but still holds, so RSS grew by less
            # than N (124 MB for 150 in a clean-clone run). Its fresh pages are untouched
            # until written: one byte a page makes the kernel back them, RSS/USS grow by N.
            block = mmap.mmap(-1, min(LEAK_STEP_MB, mb - offset) * 1024 * 1024)
            block[::PAGE] = b"\x01" * len(range(0, len(block), PAGE))
            self._leaked.append(block)
            time.sleep(0)

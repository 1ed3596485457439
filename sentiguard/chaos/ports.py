"""Loopback ports for services a test or a benchmark starts.

Why not "bind port 0, read it, close, hand it over": the kernel hands ports out of its
ephemeral range to every process of the machine, so between the close and the service's
own bind another process (another agent's test run, any outgoing connection) may take it,
and the start fails. Two things make that impossible to hit by chance here:

- Ports come from a block of `BLOCK` ports below the kernel's ephemeral range (which
  starts at 32768 by default), so no outgoing connection is ever given one of them. The
  block is reserved for this process by an exclusive `flock` on a per-block lock file
  held until the process exits, so two cooperating runs (pytest sessions, benchmarks,
  their workers) never draw from the same block. Each port handed out is checked free
  with `sentiguard.runtime.net.port_free` the way the servers bind it.
- A process that does not cooperate can still sit on a port of the block. For that, the
  starters in `sentiguard.chaos.service` recognise "address already in use" in a failed
  start (`address_in_use`) and start again on new ports, a bounded number of times.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
import threading
from pathlib import Path
from typing import IO

from sentiguard.runtime.net import port_free

FIRST_PORT = 20000
LAST_PORT = 32000  # exclusive; below the default ephemeral range (32768-60999)
BLOCK = 200
HOST = "127.0.0.1"
LOCK_DIR = Path(tempfile.gettempdir()) / "sentiguard-test-ports"

# What servers and `sentiguard up` print when a port is taken (EADDRINUSE, and up's refusal).
IN_USE_MARKERS = ("address already in use", "already in use", "errno 98")


def address_in_use(text: str) -> bool:
    """True when a failed start's output says a port was taken."""
    lowered = text.lower()
    return any(marker in lowered for marker in IN_USE_MARKERS)


class PortBlock:
    """`BLOCK` consecutive ports reserved for this process; hands them out in turn."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self.first = 0
        self._next = 0

    def _reserve(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        blocks = list(range(FIRST_PORT, LAST_PORT - BLOCK + 1, BLOCK))
        # Start at a place that depends on the pid, so concurrent runs rarely even try
        # the same lock first.
        start = os.getpid() % len(blocks)
        for first in blocks[start:] + blocks[:start]:
            f = (LOCK_DIR / f"{first}.lock").open("ab")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self._file, self.first, self._next = f, first, first
            # Held until exit; closed there, not left to the interpreter's teardown (which
            # warns about the unclosed file after every test run).
            atexit.register(f.close)
            return
        raise RuntimeError(f"every port block of {FIRST_PORT}-{LAST_PORT} is reserved")

    def take(self, count: int = 1) -> int:
        """A first port such that `count` consecutive ports of the block are free now."""
        if not 0 < count <= BLOCK:
            raise ValueError(f"count must be 1..{BLOCK}, not {count}")
        with self._lock:
            if self._file is None or self._file.closed:
                self._reserve()
            for _ in range(2 * BLOCK):
                if self._next + count > self.first + BLOCK:
                    self._next = self.first  # wrap: earlier services have stopped by now
                first = self._next
                self._next += count
                if all(port_free(HOST, first + i) for i in range(count)):
                    return first
        last = self.first + BLOCK
        raise RuntimeError(f"no {count} consecutive free ports in {self.first}-{last}")


_BLOCK = PortBlock()


def free_port() -> int:
    """A loopback port of this process's reserved block, free right now."""
    return _BLOCK.take(1)


def free_port_block(count: int) -> int:
    """A first port such that `count` consecutive loopback ports are free right now."""
    return _BLOCK.take(count)

"""Memory of a worker's process tree, measured with psutil.

A worker is the process supervisord started plus anything it forked (tokenizer helpers,
torch threads live inside it). We sum over the tree: a leak in a child is the worker's
leak too. USS (memory unique to each process: what killing it would free) is the honest
number, but reading it (/proc/PID/smaps) needs the right to inspect the process; when that
is refused we fall back to RSS, which overcounts shared libraries but is always readable.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass(frozen=True)
class MemorySample:
    """One measurement of a process tree. `uss_mb` is None when USS could not be read."""

    pid: int
    pids: tuple[int, ...]
    rss_mb: float
    uss_mb: float | None

    @property
    def used_mb(self) -> float:
        """The number the limit applies to: USS when readable, else RSS."""
        return self.uss_mb if self.uss_mb is not None else self.rss_mb


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants; raises psutil.NoSuchProcess if it is gone."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def sample(pid: int) -> MemorySample | None:
    """Measure the tree rooted at `pid`; None when the root process no longer exists."""
    try:
        procs = tree(pid)
    except psutil.NoSuchProcess:
        return None
    rss = 0
    uss: int | None = 0
    pids: list[int] = []
    for proc in procs:
        try:
            if uss is not None:
                try:
                    full = proc.memory_full_info()
                    rss += full.rss
                    uss += full.uss
                    pids.append(proc.pid)
                    continue
                except psutil.AccessDenied:
                    uss = None  # one unreadable process makes the USS sum a lie: use RSS
            rss += proc.memory_info().rss
            pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # a child exited while we walked the tree
    if not pids:
        return None
    return MemorySample(
        pid=pid,
        pids=tuple(pids),
        rss_mb=round(rss / MB, 1),
        uss_mb=None if uss is None else round(uss / MB, 1),
    )


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the tree rooted at `pid` has used so far; None if gone."""
    try:
        procs = tree(pid)
    except psutil.NoSuchProcess:
        return None
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return total


def kill_tree(pid: int, timeout: float = 5.0) -> list[int]:
    """SIGKILL the process and all its descendants at once; return the pids signalled.

    For a hung worker: it will not honour SIGTERM, and supervisord would wait its
    stopwaitsecs before escalating. Children are collected before anything is killed, so
    none is orphaned (and reparented out of reach) by its parent dying first.
    """
    try:
        procs = tree(pid)
    except psutil.NoSuchProcess:
        return []
    killed: list[int] = []
    for proc in procs:
        try:
            # SIGKILL also works on a SIGSTOPped process; no need to SIGCONT first.
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
        except ProcessLookupError:
            continue
    psutil.wait_procs(procs, timeout=timeout)
    return killed


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group `pid` leads (every program leads its own), then `pid`."""
    for send in (lambda: os.killpg(pid, signum), lambda: os.kill(pid, signum)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send()


def stop_gracefully(procs: list[psutil.Process], timeout_s: float) -> list[int]:
    """SIGTERM each process's group, wait up to `timeout_s` for them all, SIGKILL the
    groups of those left; returns the pids that had to be killed."""
    for p in procs:
        signal_group(p.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=max(0.1, timeout_s))
    for p in alive:
        signal_group(p.pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]

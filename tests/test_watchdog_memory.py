"""Memory of a real process tree, and killing a real (stopped) tree outright."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sentiguard.runtime import memory
from tests.watchdog_helpers import wait_until

ALLOC_MB = 80

# A parent that starts a child; the child allocates ALLOC_MB, writes "ready" into a file
# and sleeps. The leak lives in the child, so only a tree-wide measurement sees it.
TREE = f"""
import subprocess, sys, time
child = '''
import sys, time
block = b"x" * ({ALLOC_MB} * 1024 * 1024)
open(sys.argv[1], "w").write("ready")
time.sleep(120)
'''
subprocess.Popen([sys.executable, "-c", child, sys.argv[1]])
time.sleep(120)
"""


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    flag = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", TREE, str(flag)], start_new_session=True)
    try:
        yield proc.pid, flag
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_sample_sums_the_whole_tree(tree: tuple[int, Path]) -> None:
    pid, flag = tree
    wait_until(flag.exists, timeout=30)
    sample = memory.sample(pid)
    assert sample is not None
    assert len(sample.pids) == 2 and sample.pids[0] == pid
    assert sample.uss_mb is not None  # our own processes: USS is readable
    assert sample.used_mb == sample.uss_mb
    assert sample.uss_mb >= ALLOC_MB
    assert sample.rss_mb >= sample.uss_mb
    # The parent alone is far below: the leak is only visible tree-wide.
    alone = psutil.Process(pid).memory_full_info().uss / memory.MB
    assert alone < ALLOC_MB / 2


def test_sample_of_a_gone_process_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert memory.sample(proc.pid) is None


def test_rss_is_used_when_uss_is_refused(
    tree: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, flag = tree
    wait_until(flag.exists, timeout=30)

    def refuse(self: psutil.Process) -> None:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_full_info", refuse)
    sample = memory.sample(pid)
    assert sample is not None and sample.uss_mb is None
    assert sample.used_mb == sample.rss_mb >= ALLOC_MB


def test_kill_tree_kills_a_stopped_tree(tree: tuple[int, Path]) -> None:
    pid, flag = tree
    wait_until(flag.exists, timeout=30)
    pids = [p.pid for p in memory.tree(pid)]
    for p in pids:
        os.kill(p, signal.SIGSTOP)  # hung: would never act on SIGTERM
    killed = memory.kill_tree(pid)
    assert sorted(killed) == sorted(pids)

    def gone(p: int) -> bool:
        try:
            return psutil.Process(p).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(lambda: all(gone(p) for p in pids), timeout=10)


def test_cpu_seconds_counts_the_tree_and_stops_for_a_sleeping_one(
    tree: tuple[int, Path],
) -> None:
    pid, flag = tree
    wait_until(flag.exists, timeout=30)
    used = memory.cpu_seconds(pid)
    assert used is not None and used > 0  # two interpreters started, 80 MB written
    own = sum(psutil.Process(pid).cpu_times()[:2])
    assert used > own  # the child's CPU time is in the sum
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert memory.cpu_seconds(proc.pid) is None

"""The event log's file never stops a process, and stays bounded (issue 11, item 5).

An unwritable log directory (a regular file where the directory should be: that holds
for root too, whom permission bits do not stop) or a full disk (`/dev/full`) sends the
lines to the stream with one `log_file_unwritable` warning, and the file is picked up
again once fixed; the file rotates by size to `name.1` ... `name.N`, with two processes
appending at once; `status` and `sentiguard logs` still read it. Then a real watchdog
process with an unwritable log directory keeps running and logging to stdout.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sentiguard.chaos.client import wait_until
from sentiguard.chaos.service import service_env
from sentiguard.logs import EventLog
from sentiguard.runtime import logview
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.status import last_decisions
from sentiguard.watchdog.decisions import DecisionLog
from sentiguard.watchdog.policy import Backoff, WorkerRecord
from tests.watchdog_helpers import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def blocked_dir(tmp_path: Path) -> Path:
    """A log directory no one can create: its parent is a regular file."""
    (tmp_path / "blocked").write_text("not a directory\n")
    return tmp_path / "blocked" / "logs"


def unblock(tmp_path: Path) -> None:
    (tmp_path / "blocked").unlink()
    (tmp_path / "blocked" / "logs").mkdir(parents=True)


def decide(log: DecisionLog, n: int) -> None:
    rec = WorkerRecord(name="primary_0", port=1, backoff=Backoff(1.0, 8.0), pid=100 + n)
    log.decide(rec, "crash", f"exit {n}", "restart", exit_code=n)


def test_unwritable_directory_keeps_the_decision_log_deciding(tmp_path: Path) -> None:
    path = blocked_dir(tmp_path) / "watchdog.jsonl"
    stream, clock = io.StringIO(), Clock()
    decisions = DecisionLog(EventLog(stream, path, retry_s=5.0, clock=clock))
    for n in range(3):
        decide(decisions, n)  # no OSError: it used to end the watchdog here
    lines = records(stream.getvalue())
    assert [r["event"] for r in lines] == ["log_file_unwritable", "crash", "crash", "crash"]
    warning = lines[0]
    assert warning["path"] == str(path) and "NotADirectoryError" in warning["reason"]
    assert str(path.parent) in warning["fix"] and "service.log_dir" in warning["fix"]
    assert [d["exit_code"] for d in decisions.recent()] == [0, 1, 2]  # still deciding

    unblock(tmp_path)
    decide(decisions, 3)  # before the retry time: still the stream only
    assert not path.exists()
    clock.now += 5.0
    decide(decisions, 4)
    in_file = records(path.read_text())
    assert [r["event"] for r in in_file] == ["log_file_writable", "crash"]
    assert in_file[0]["missed_lines"] == 4 and in_file[1]["exit_code"] == 4
    on_stream = records(stream.getvalue())  # every line, and the notices before them
    assert [r["event"] for r in on_stream[-2:]] == ["log_file_writable", "crash"]
    assert [r["exit_code"] for r in on_stream if r["event"] == "crash"] == [0, 1, 2, 3, 4]


def test_a_second_outage_warns_again(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "watchdog.jsonl"
    stream, clock = io.StringIO(), Clock()
    log = EventLog(stream, path, retry_s=1.0, clock=clock)
    log("one")
    path.unlink()
    path.mkdir()  # the name is taken by a directory: appending fails
    log("two")
    path.rmdir()
    clock.now += 1.0
    log("three")
    path.unlink()
    path.mkdir()
    log("four")
    events = [r["event"] for r in records(stream.getvalue())]
    assert events.count("log_file_unwritable") == 2 and events.count("log_file_writable") == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_goes_to_the_stream_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "watchdog.jsonl"
    path.symlink_to("/dev/full")  # every write: ENOSPC
    stream = io.StringIO()
    log = EventLog(stream, path)
    log("crash", worker="primary_0")
    log("start", worker="primary_0")
    lines = records(stream.getvalue())
    assert [r["event"] for r in lines] == ["log_file_unwritable", "crash", "start"]
    assert "free space" in lines[0]["fix"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_directory(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o555)
    stream = io.StringIO()
    EventLog(stream, logs / "watchdog.jsonl")("crash")
    assert "log_file_unwritable" in stream.getvalue()
    logs.chmod(0o755)


def test_a_quiet_stream_spills_to_stderr_during_an_outage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `sentiguard reload` logs to the file with a devnull stream: the lines must not vanish.
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        log = EventLog(quiet, blocked_dir(tmp_path) / "watchdog.jsonl")
        log("reload_step", worker="primary_0")
    err = records(capsys.readouterr().err)
    assert [r["event"] for r in err] == ["log_file_unwritable", "reload_step"]


def test_decision_log_open_survives_an_unwritable_log_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path, service__log_dir=str(blocked_dir(tmp_path)))
    decisions = DecisionLog.open(settings)  # used to raise: mkdir at construction
    decide(decisions, 7)
    out = records(capsys.readouterr().out)
    assert [r["event"] for r in out] == ["log_file_unwritable", "crash"]


def test_rotation_keeps_at_most_n_backups_of_bounded_size(tmp_path: Path) -> None:
    path = tmp_path / "watchdog.jsonl"
    log = EventLog(io.StringIO(), path, max_bytes=2000, backups=3)
    for n in range(300):
        log("crash", worker="primary_0", n=n, pad="x" * 40)
    files = logview.rotated(path)  # oldest first, as `sentiguard logs` reads them
    assert [p.name for p in files] == [f"watchdog.jsonl.{i}" for i in (3, 2, 1)] + [path.name]
    assert not path.with_name("watchdog.jsonl.4").exists()
    assert all(p.stat().st_size <= 2000 for p in files)
    kept = [r["n"] for p in files for r in records(p.read_text())]
    assert kept == list(range(300 - len(kept), 300))  # the newest, in order, none twice
    assert [r["n"] for r in last_decisions(path, count=3)] == [297, 298, 299]


def test_no_backups_starts_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "watchdog.jsonl"
    log = EventLog(io.StringIO(), path, max_bytes=500, backups=0)
    for n in range(50):
        log("crash", n=n)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["watchdog.jsonl"]
    assert 0 < path.stat().st_size <= 500 and records(path.read_text())[-1]["n"] == 49


def test_rotating_takes_supervisords_log_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, service__log_max_mb=3, service__log_backups=2)
    log = EventLog.rotating(RunDir(settings).watchdog_log, settings)
    assert (log.max_bytes, log.backups) == (3 * 1024 * 1024, 2)
    assert log.path == RunDir(settings).watchdog_log


WRITER = """
import io, sys
from pathlib import Path
from sentiguard.logs import EventLog
log = EventLog(io.StringIO(), Path(sys.argv[1]), max_bytes=4000, backups=500)
for n in range(int(sys.argv[3])):
    log("step", writer=sys.argv[2], n=n, pad="y" * 30)
"""


def test_two_processes_appending_and_rotating_lose_no_line(tmp_path: Path) -> None:
    # The watchdog and `sentiguard reload` both append to watchdog.jsonl.
    path = tmp_path / "watchdog.jsonl"
    count = 400
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(count)])
        for name in ("watchdog", "reload")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    files = logview.rotated(path)
    assert len(files) > 5 and all(p.stat().st_size <= 4000 for p in files)
    lines = [r for p in files for r in records(p.read_text())]  # every line parses
    for name in ("watchdog", "reload"):
        assert [r["n"] for r in lines if r["writer"] == name] == list(range(count))


@pytest.mark.integration
def test_real_watchdog_with_unwritable_log_dir_keeps_running_and_logging(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, service__log_dir=str(blocked_dir(tmp_path)))
    env = service_env(
        {
            "service.run_dir": str(tmp_path / "run"),
            "service.log_dir": settings.service.log_dir,
            "watchdog.interval_s": 0.2,
            "primary.base_port": 1,  # nothing to watch: no supervisord runs
        }
    )
    out_path = tmp_path / "watchdog.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentiguard.watchdog"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def seen() -> set[str]:
            return {r.get("event", "") for r in records(out_path.read_text()) if r}

        wait_until(lambda: {"log_file_unwritable", "supervisor_unreachable"} <= seen(), 30)
        started = time.monotonic()
        time.sleep(1.0)
        assert proc.poll() is None, out_path.read_text()  # still watching
        assert "watchdog_started" in seen()

        unblock(tmp_path)  # the operator fixes the directory
        time.sleep(max(0.0, 5.5 - (time.monotonic() - started)))  # past RETRY_S
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, out_path.read_text()
        in_file = [r["event"] for r in records(RunDir(settings).watchdog_log.read_text())]
        assert in_file == ["log_file_writable", "watchdog_stopped"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def test_status_reads_the_last_decisions_across_a_rotation(tmp_path: Path) -> None:
    current = tmp_path / "watchdog.jsonl"
    rotated = tmp_path / "watchdog.jsonl.1"
    rotated.write_text("".join(json.dumps({"event": f"old{i}"}) + "\n" for i in range(4)))
    current.write_text(json.dumps({"event": "new"}) + "\n")
    events = [d["event"] for d in last_decisions(current, count=3)]
    assert events == ["old2", "old3", "new"]

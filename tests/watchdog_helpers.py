"""Shared pieces of the watchdog tests: settings in temp dirs, fakes, a real supervisord.

The real supervisord runs the config `sentiguard up` renders (`render_supervisord_conf`)
for the test's settings; only the workers' command is swapped for a stand-in, and the
gateway and watchdog programs are not started (the tests run their own watchdog).

Also runnable as that stand-in worker (starts in milliseconds, no model): `python
tests/watchdog_helpers.py worker --index I`, which reads its settings from the
`SENTIGUARD_*` environment like a real worker, serves `/ready`, `/health` and `/live`
(without counters) on its port with `model_version` = the contents of
`<run_dir>/primary_model` (or "v0"; "broken" makes
it exit 4 at start like a worker whose model cannot load), and `POST /_exit` to exit with
the code in header X-Code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # when run as a script by supervisord
    sys.path.insert(0, str(ROOT))

from sentiguard import settings as settings_mod  # noqa: E402
from sentiguard.chaos.client import wait_until  # noqa: E402
from sentiguard.runtime.drain import Routable  # noqa: E402
from sentiguard.runtime.endpoints import Readiness, worker  # noqa: E402
from sentiguard.runtime.memory import MemorySample  # noqa: E402
from sentiguard.runtime.paths import RunDir, write_private  # noqa: E402
from sentiguard.runtime.supervisor_client import (  # noqa: E402
    ProcessInfo,
    ProcessState,
    SupervisorClient,
    SupervisorUnavailable,
)
from sentiguard.runtime.supervisord import render_supervisord_conf  # noqa: E402
from sentiguard.settings import Settings  # noqa: E402
from sentiguard.watchdog.probe import LiveResult, ProbeResult  # noqa: E402

HELPERS = Path(__file__).resolve()


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "service.run_dir": str(tmp / "run"),
        "service.log_dir": str(tmp / "logs"),
        "watchdog.interval_s": 0.1,
        "watchdog.backoff_initial_s": 1.0,
        "watchdog.backoff_max_s": 8.0,
        "watchdog.memory_limit_mb": 100,
        "watchdog.memory_critical_mb": 500,
        "watchdog.memory_samples": 3,
        "watchdog.probe_failures": 3,
        "watchdog.probe_budget_ms": 500,
        "watchdog.drain_timeout_s": 1.0,
        "watchdog.start_timeout_s": 10.0,
        "watchdog.park_retry_s": 60.0,
        "primary.workers": 2,
        # supervisord waits (7 - 1) // 3 = 2 s for a program to stop before SIGKILL.
        "service.graceful_timeout_s": 7,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    (tmp / "run").mkdir(parents=True, exist_ok=True)
    return settings_mod.load(environ={}, overrides=values)


def read_log(settings: Settings) -> list[dict[str, Any]]:
    path = RunDir(settings).watchdog_log
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events(settings: Settings, name: str) -> list[dict[str, Any]]:
    return [r for r in read_log(settings) if r["event"] == name]


# --- fakes ---------------------------------------------------------------------------


class FakeSupervisor:
    """Records calls; `procs` is what getAllProcessInfo would say. start() makes a new pid."""

    def __init__(self, names: list[str]) -> None:
        self.procs = {
            n: ProcessInfo("primary", n, ProcessState.RUNNING, 100 + i, 0)
            for i, n in enumerate(names)
        }
        self.calls: list[tuple[str, str]] = []
        self.next_pid = 1000
        self.lock = threading.Lock()
        self.log_tail = ""

    def set(self, name: str, state: ProcessState, pid: int = 0, exitstatus: int = 0) -> None:
        with self.lock:
            self.procs[name] = ProcessInfo("primary", name, state, pid, exitstatus)

    def supervisord_pid(self) -> int:
        return 4242

    def processes(self, group: str = "primary") -> dict[str, ProcessInfo]:
        with self.lock:
            return dict(self.procs)

    def info(self, name: str) -> ProcessInfo:
        with self.lock:
            return self.procs[name]

    def start(self, name: str) -> None:
        with self.lock:
            self.calls.append(("start", name))
            self.next_pid += 1
            self.procs[name] = ProcessInfo("primary", name, ProcessState.RUNNING, self.next_pid, 0)

    def stop(self, name: str, timeout: float = 30.0) -> None:
        with self.lock:
            self.calls.append(("stop", name))
            old = self.procs[name]
            if old.state.alive or old.state is ProcessState.BACKOFF:
                self.procs[name] = ProcessInfo("primary", name, ProcessState.STOPPED, 0, 0)

    def tail_log(self, name: str, length: int = 8192) -> str:
        return self.log_tail


class FakeGateway:
    """A GatewayLink double: records every PUT, answers in_flight = `in_flight[name]`."""

    def __init__(self, calls: list[tuple[str, str]] | None = None, up: bool = True) -> None:
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.summaries: list[dict[str, Any]] = []
        self.calls = calls if calls is not None else []
        self.in_flight: dict[str, int] = {}
        self.up = up

    def put_worker(self, name: str, body: dict[str, Any]) -> int | None:
        if not self.up:
            return None
        self.reports.append((name, dict(body)))
        if body.get("drain"):
            self.calls.append(("drain", name))
        return self.in_flight.get(name, 0)

    def put_watchdog(self, body: dict[str, Any]) -> bool:
        self.summaries.append(body)
        return self.up

    def wait_routable(self, name: str, pid: int | None, stop: Any, **_: Any) -> Routable:
        return Routable(True, 0.0, "no_gateway")

    def drain_and_wait(
        self,
        name: str,
        body: Callable[[], dict[str, Any]],
        timeout_s: float,
        stop: Any,
        poll_s: float = 0.1,
    ) -> tuple[int | None, float]:
        return self.put_worker(name, body()), 0.0


class FakeWorkers:
    """Fake /health, /ready and memory per port/pid, switchable from the test."""

    def __init__(self, base_port: int) -> None:
        self.base_port = base_port
        self.memory_mb: dict[int, float] = {}  # index -> USS
        self.hung: set[int] = set()
        self.ready_ports: set[int] | None = None  # None: every port is ready

    def index(self, port: int) -> int:
        return port - self.base_port

    def sample(self, pid: int) -> MemorySample | None:
        # pids of the fake supervisor: 100 + index at first, later anything.
        mb = self.memory_mb.get(pid, 50.0)
        return MemorySample(pid, (pid,), rss_mb=mb + 50, uss_mb=mb)

    def health(self, port: int, timeout_s: float) -> ProbeResult:
        if self.index(port) in self.hung:
            return ProbeResult(False, timeout_s * 1000, "timeout")
        return ProbeResult(True, 5.0)

    def live(self, port: int, timeout_s: float) -> LiveResult:
        if self.index(port) in self.hung:
            return LiveResult(False, timeout_s * 1000, "timeout")
        return LiveResult(True, 1.0)

    def ready(self, port: int, timeout_s: float) -> Readiness:
        if self.ready_ports is not None and port not in self.ready_ports:
            return Readiness(False, error="loading")
        return Readiness(True, model_version="v1")


# --- a real supervisord --------------------------------------------------------------


def set_in_section(conf: str, section: str, **values: str) -> str:
    """`conf` with `key = value` set for each of `values` in its existing `[section]` lines."""
    lines: list[str] = []
    current = None
    missing = dict(values)
    for line in conf.splitlines():
        if line.startswith("["):
            current = line.strip().strip("[]")
        elif current == section and "=" in line:
            key = line.split("=", 1)[0].strip()
            if key in values:
                line = f"{key} = {missing.pop(key)}"
        lines.append(line)
    assert not missing, f"no {sorted(missing)} in [{section}] of the rendered config"
    return "\n".join(lines) + "\n"


def supervisord_conf(settings: Settings, program: str) -> Path:
    """Write the config `sentiguard up` would for `settings`, adapted for a test.

    `primary.workers` workers run `program` instead of the real worker; the gateway and
    the watchdog programs stay in the config but are not started.
    """
    conf = render_supervisord_conf(settings)
    conf = set_in_section(conf, "program:primary", command=program)
    for name in ("gateway", "watchdog"):
        conf = set_in_section(conf, f"program:{name}", autostart="false")
    run = RunDir(settings)
    run.root.mkdir(parents=True, exist_ok=True)
    run.logs.mkdir(parents=True, exist_ok=True)
    write_private(run.supervisord_conf, conf)  # as `up` does: it holds the settings
    return run.supervisord_conf


@contextmanager
def running_supervisord(settings: Settings, program: str) -> Iterator[None]:
    """Run a real supervisord whose workers run `program`; killpg everything on exit."""
    conf = supervisord_conf(settings, program)
    supervisord = Path(sys.executable).parent / "supervisord"
    proc = subprocess.Popen(
        [str(supervisord), "-c", str(conf)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            SupervisorClient(settings, timeout=1.0).processes()
            return True
        except SupervisorUnavailable:
            return False

    try:
        wait_until(answers, timeout=20)
        yield
    finally:
        children = _descendants(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for pid in [proc.pid, *children]:
            for kill in (os.killpg, os.kill):
                with suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=5)


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def worker_command() -> str:
    """The stand-in worker as a supervisord command (its settings come from the environment
    line of the rendered config, as a real worker's do)."""
    return f"{sys.executable} {HELPERS} worker --index %(process_num)d"


# --- the stand-in worker -------------------------------------------------------------


def _serve_worker(index: int) -> None:
    settings = settings_mod.load()
    model_file = RunDir(settings).reload_model
    version = model_file.read_text().strip() if model_file.exists() else "v0"
    if version == "broken":
        print(json.dumps({"event": "model_load_failed", "cause": "corrupt", "fix": "retrain"}))
        sys.exit(4)  # ExitCode.MODEL_LOAD_ERROR, as a worker that cannot load its model

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            pid = os.getpid()
            if self.path == "/ready":
                self._send(200, {"ready": True, "pid": pid, "model_version": version})
            elif self.path == "/live":
                self._send(200, {"pid": pid, "ready": True, "progress": None, "memory": None})
            elif self.path == "/health":
                self._send(
                    200, {"status": "ok", "probe_ms": 1.0, "pid": pid, "model_version": version}
                )
            else:
                self._send(404, {})

        def do_POST(self) -> None:
            if self.path == "/_exit":
                self._send(200, {})
                os._exit(int(self.headers.get("X-Code", "1")))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", worker(settings, index).port), Handler)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    server.serve_forever()


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("worker")
    p.add_argument("--index", type=int, required=True)
    _serve_worker(p.parse_args().index)

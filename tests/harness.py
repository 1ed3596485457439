"""Start the real service (`sentiguard up`) for a test or a benchmark, and stop it cleanly.

`start_service(...)` runs `python -m sentiguard up` in its own session on free ports, with
its run and log directories under a private temporary directory, so concurrent test runs
cannot collide. `ServiceHandle.stop()` signals it like an operator would (SIGTERM to `up`,
or SIGINT to the whole group like Ctrl-C), waits for the graceful timeout, then kills the
whole tree, and returns whatever outlived the stop: the orphans a test asserts are absent.

Used by tests/conftest.py, tests/test_service.py, tests/test_resilience.py and
bench/chaos.py; it imports only the standard library, psutil and sentiguard's own helpers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from sentiguard import settings as settings_mod
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.service import port_free

T = TypeVar("T")

# Loading torch and a model on two cores shared with a training job is slow; readiness
# is polled against this deadline, never slept for.
READY_TIMEOUT_S = 420.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(count: int) -> int:
    """A first port such that `count` consecutive loopback ports are free right now."""
    for _ in range(200):
        first = free_port()
        if first + count <= 65535 and all(port_free("127.0.0.1", first + i) for i in range(count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free loopback ports")


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


@dataclass
class ServiceHandle:
    """A running `sentiguard up` and the settings it was started with."""

    proc: subprocess.Popen[bytes]
    root: Path
    env: dict[str, str]
    settings: settings_mod.Settings
    started_at: float
    output: Path
    _log: Any = field(repr=False, default=None)

    @property
    def port(self) -> int:
        return self.settings.gateway.port

    @property
    def workers(self) -> int:
        return self.settings.primary.workers

    def worker_port(self, index: int) -> int:
        return self.settings.primary.base_port + index

    @property
    def log_dir(self) -> Path:
        return RunDir(self.settings).logs

    def get(self, path: str, timeout: float = 5.0) -> Response:
        return http_request(self.port, "GET", path, timeout=timeout)

    def analyze(self, text: str, timeout: float = 10.0) -> Response:
        return post_json(self.port, "/analyze", {"text": text}, timeout)

    def status(self) -> dict[str, Any]:
        response = self.get("/status", timeout=3.0)
        assert response.status == 200, f"/status answered {response.status}: {response.body}"
        return dict(response.body)

    def worker(self, index: int) -> dict[str, Any]:
        name = f"primary_{index}"
        return next(w for w in self.status()["workers"] if w["name"] == name)

    def fault(self, index: int, doc: Mapping[str, Any], timeout: float = 30.0) -> Response:
        """POST a fault to worker `index`'s loopback port (served only with faults enabled)."""
        return post_json(self.worker_port(index), "/_fault", dict(doc), timeout)

    def rpc(self) -> Any:
        return sv.rpc(self.settings)

    def supervisor_pid(self, index: int) -> int:
        """The pid supervisord reports for primary_`index` (0 when it is not running)."""
        return int(self.rpc().supervisor.getProcessInfo(f"primary:primary_{index}")["pid"])

    def all_ready(self) -> bool:
        status = self.status()
        workers = status["workers"]
        return len(workers) == self.workers and all(w["ready"] for w in workers)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every worker is ready; the failure message carries the logs' tails."""
        try:
            wait_until(self.all_ready, timeout, "every primary worker to be ready", 0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnostics()}") from None

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `sentiguard ARGS` against this service (same settings) from another process."""
        return subprocess.run(
            [sys.executable, "-m", "sentiguard", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def tree(self) -> list[psutil.Process]:
        """`up` and every process under it right now."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def diagnostics(self, lines: int = 15) -> str:
        parts = []
        for path in [self.output, *sorted(self.log_dir.glob("*.log"))]:
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(
        self, sig: int = signal.SIGTERM, group: bool = False, timeout: float | None = None
    ) -> tuple[float, list[psutil.Process]]:
        """Signal `up` (or its whole process group) and wait for it to exit.

        Returns (seconds until `up` exited, processes of the tree that outlived it). Anything
        still alive after `timeout` is killed, so a failed test cannot leak processes.
        """
        if timeout is None:
            timeout = float(self.settings.service.graceful_timeout_s) + 5.0
        before = self.tree()
        start = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        took = time.monotonic() - start
        # Give reparented processes a moment to be reaped before judging them orphans.
        _, alive = psutil.wait_procs(before[1:], timeout=1.0)
        orphans = [p for p in alive if _alive(p)]
        kill_tree([self.proc.pid, *(p.pid for p in before)])
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
        return took, orphans


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_tree(pids: list[int]) -> None:
    """SIGKILL each pid's process group and the pid itself (programs lead their groups)."""
    for pid in pids:
        for send in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                send(pid, signal.SIGKILL)


def service_env(overrides: Mapping[str, Any]) -> dict[str, str]:
    """This environment without any SENTIGUARD_* variable, plus `overrides` as settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(settings_mod.ENV_PREFIX)}
    for name, value in overrides.items():
        setting = settings_mod.BY_NAME[name]
        env[setting.env] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


def start_service(
    root: Path,
    workers: int = 2,
    faults: bool = True,
    overrides: Mapping[str, Any] | None = None,
    wait: bool = True,
) -> ServiceHandle:
    """Start `sentiguard up` on free ports with run/log dirs under `root`.

    `overrides` maps setting names (e.g. "watchdog.memory_limit_mb") to values. With `wait`,
    returns once every worker is ready; on failure the service is stopped first.
    """
    root.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "gateway.port": free_port(),
        "primary.base_port": free_port_block(workers),
        "primary.workers": workers,
        "faults.enabled": faults,
        "service.run_dir": str(root / "run"),
        "service.log_dir": str(root / "logs"),
        # Two cores shared with training jobs and other test runs: a worker may need well
        # over the default minute to import torch and load its model.
        "watchdog.start_timeout_s": 300.0,
        **(overrides or {}),
    }
    env = service_env(values)
    settings = settings_mod.load(None, environ=env)
    output = root / "up.out"
    log = output.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentiguard", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle = ServiceHandle(proc, root, env, settings, time.monotonic(), output, log)
    if wait:
        try:
            handle.wait_ready()
        except BaseException:
            handle.stop()
            raise
    return handle


@contextlib.contextmanager
def run_gateway(root: Path, **overrides: Any) -> Iterator[str]:
    """The real gateway on a free port, no primary worker ready; yields its base URL."""
    port = free_port()
    env = service_env(
        {
            "gateway.host": "127.0.0.1",
            "gateway.port": port,
            "primary.workers": 1,
            "primary.base_port": free_port(),  # bound and released: nothing listens there
            "service.run_dir": str(root / "run"),
            "service.log_dir": str(root / "logs"),
            **overrides,
        }
    )
    out = (root / "gateway.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentiguard.gateway"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            log = (root / "gateway.out").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the gateway exited with {proc.returncode}:\n{log}")
        return http_request(port, "GET", "/ready", timeout=2).status == 200

    try:
        wait_until(ready, 90, "the gateway's /ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        out.close()

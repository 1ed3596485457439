"""Start the real service (`sentiguard up`, or the gateway alone) and stop it cleanly.

`start_service(...)` runs `python -m sentiguard up` in its own session on ports of this
process's reserved block (`sentiguard.chaos.ports`), with its run and log directories under
a private directory, so concurrent runs cannot collide. When a port was taken anyway (a
process outside the reservation sat on it), the start fails with "address already in use"
somewhere in its output or logs: the service is stopped and started again on new ports,
at most `START_ATTEMPTS` times. `ServiceHandle.stop()` signals it like an operator would
(SIGTERM to `up`, or SIGINT to the whole group like Ctrl-C), waits for the graceful
timeout, then kills the whole tree, and returns whatever outlived the stop: the orphans a
test asserts are absent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from sentiguard import settings as settings_mod
from sentiguard.chaos.client import Response, http_request, post_json, wait_until
from sentiguard.chaos.ports import address_in_use, free_port, free_port_block
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime import trust
from sentiguard.runtime.endpoints import worker, worker_name
from sentiguard.runtime.paths import RunDir

# Loading torch and a model on two cores shared with a training job is slow; readiness
# is polled against this deadline, never slept for.
READY_TIMEOUT_S = 420.0
START_ATTEMPTS = 3


class ServiceExited(AssertionError):
    """`up` (or the gateway) exited while we waited for it to become ready."""

    def __init__(self, message: str, port_clash: bool) -> None:
        super().__init__(message)
        self.port_clash = port_clash


@dataclass
class ServiceHandle:
    """A running `sentiguard up` and the settings it was started with."""

    proc: subprocess.Popen[bytes]
    root: Path
    env: dict[str, str]
    settings: settings_mod.Settings
    started_at: float
    output: Path
    _log: IO[bytes] | None = field(repr=False, default=None)

    @property
    def port(self) -> int:
        return self.settings.gateway.port

    @property
    def workers(self) -> int:
        return self.settings.primary.workers

    def worker_port(self, index: int) -> int:
        return worker(self.settings, index).port

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
        name = worker_name(index)
        return dict(next(w for w in self.status()["workers"] if w["name"] == name))

    def fault(self, index: int, doc: Mapping[str, Any], timeout: float = 30.0) -> Response:
        """POST a fault to worker `index`'s loopback port (served only with faults enabled),
        with the service's per-up secret, which a worker needs for /_fault."""
        secret = trust.load_secret(self.settings)
        assert secret is not None, f"no secret at {trust.secret_path(self.settings)}"
        headers = {"Content-Type": "application/json", **trust.bearer_headers(secret)}
        body = json.dumps(dict(doc), ensure_ascii=False).encode()
        return http_request(self.worker_port(index), "POST", "/_fault", body, headers, timeout)

    def rpc(self) -> Any:
        return sv.rpc(self.settings)

    def supervisor_pid(self, index: int) -> int:
        """The pid supervisord reports for primary_`index` (0 when it is not running)."""
        return int(self.rpc().supervisor.getProcessInfo(f"primary:primary_{index}")["pid"])

    def gateway_pids(self) -> dict[str, int]:
        """supervisord's pid of each gateway process (`gateway_I`; 0 when not running)."""
        infos = self.rpc().supervisor.getAllProcessInfo()
        return {i["name"]: int(i["pid"]) for i in infos if i["group"] == "gateway"}

    def all_ready(self) -> bool:
        workers = self.status()["workers"]
        return len(workers) == self.workers and all(w["ready"] for w in workers)

    def port_clash(self) -> bool:
        """True when `up`'s output or a program's log says one of our ports was taken."""
        for path in [self.output, *self.log_dir.glob("*.log")]:
            with contextlib.suppress(OSError):
                if address_in_use(path.read_text(errors="replace")):
                    return True
        return False

    def _ready_or_exited(self, starting: bool) -> bool:
        code = self.proc.poll()
        if code is not None:
            raise ServiceExited(
                f"`sentiguard up` exited with {code} before every worker was ready",
                self.port_clash(),
            )
        # Only while starting: a long-lived service's logs may hold an old, healed clash.
        if starting and self.port_clash():
            raise ServiceExited("a program of the service found its port taken", True)
        return self.all_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, starting: bool = False) -> None:
        """Wait until every worker is ready; the failure message carries the logs' tails.

        Raises ServiceExited at once when `up` exits or (`starting`) a port was taken.
        """
        try:
            wait_until(
                lambda: self._ready_or_exited(starting),
                timeout,
                "every primary worker to be ready",
                0.5,
            )
        except ServiceExited as e:
            raise ServiceExited(f"{e}\n{self.diagnostics()}", e.port_clash) from None
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
        still alive after `timeout` is killed, so a failed run cannot leak processes.
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
        # Reparented processes get a bounded wait to be reaped before they count as orphans.
        _, alive = psutil.wait_procs(before[1:], timeout=1.0)
        orphans = [p for p in alive if _alive(p)]
        kill_groups([self.proc.pid, *(p.pid for p in before)])
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
        return took, orphans


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def kill_groups(pids: list[int]) -> None:
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


def _launch(root: Path, values: Mapping[str, Any]) -> ServiceHandle:
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
    return ServiceHandle(proc, root, env, settings, time.monotonic(), output, log)


def start_service(
    root: Path,
    workers: int = 2,
    faults: bool = True,
    overrides: Mapping[str, Any] | None = None,
    wait: bool = True,
) -> ServiceHandle:
    """Start `sentiguard up` on free ports with run/log dirs under `root`.

    `overrides` maps setting names (e.g. "watchdog.memory_limit_mb") to values. With `wait`,
    returns once every worker is ready, starting again on new ports after a port clash
    (only on ports it chose itself); on any other failure the service is stopped first.
    """
    root.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    chose_ports = not {"gateway.port", "primary.base_port"} & set(overrides)
    for attempt in range(1, START_ATTEMPTS + 1):
        values: dict[str, Any] = {
            "gateway.port": free_port(),
            "primary.base_port": free_port_block(workers),
            "primary.workers": workers,
            "faults.enabled": faults,
            "service.run_dir": str(root / "run"),
            "service.log_dir": str(root / "logs"),
            # Two cores shared with training jobs and other test runs: a worker may need
            # well over the default minute to import torch and load its model.
            "watchdog.start_timeout_s": 300.0,
            **overrides,
        }
        handle = _launch(root, values)
        if not wait:
            return handle
        try:
            handle.wait_ready(starting=True)
            return handle
        except ServiceExited as e:
            handle.stop()
            if not (e.port_clash and chose_ports and attempt < START_ATTEMPTS):
                raise
            _set_aside(root, attempt)
        except BaseException:
            handle.stop()
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _set_aside(root: Path, attempt: int) -> None:
    """Keep a clashed attempt's output and logs for the record, out of the next one's way."""
    for name in ("up.out", "logs"):
        with contextlib.suppress(OSError):
            (root / name).rename(root / f"{name}.clash{attempt}")


@contextlib.contextmanager
def run_gateway(root: Path, **overrides: Any) -> Iterator[str]:
    """The real gateway on a free port, no primary worker ready; yields its base URL.

    Started again on a new port (bounded) when its port turns out to be taken.
    """
    root.mkdir(parents=True, exist_ok=True)
    output = root / "gateway.out"
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        env = service_env(
            {
                "gateway.host": "127.0.0.1",
                "gateway.port": port,
                "primary.workers": 1,
                "primary.base_port": free_port(),  # in our reserved block: nothing listens
                "service.run_dir": str(root / "run"),
                "service.log_dir": str(root / "logs"),
                **overrides,
            }
        )
        with output.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sentiguard.gateway"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            try:
                ready = functools.partial(_gateway_ready, proc, port, output)
                wait_until(ready, 90, "the gateway's /ready")
            except ServiceExited as e:
                if e.port_clash and attempt < START_ATTEMPTS:
                    continue
                raise
            yield f"http://127.0.0.1:{port}"
            return
        finally:
            _stop_group(proc)


def _gateway_ready(proc: subprocess.Popen[bytes], port: int, output: Path) -> bool:
    if proc.poll() is not None:
        log = output.read_text(errors="replace")
        raise ServiceExited(
            f"the gateway exited with {proc.returncode}:\n{log[-3000:]}", address_in_use(log)
        )
    return http_request(port, "GET", "/ready", timeout=2).status == 200


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)

"""Helpers for the primary worker tests: start a real worker process, poll it, stop it.

Each worker runs in its own session on a free loopback port with temporary run/log
directories, so tests never collide with another engineer's service or tests, and
teardown kills its whole process group. Its run directory gets a fresh per-up secret
first, as `sentiguard up` writes one; `worker.auth` is the header /predict and /_fault need.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from sentiguard import settings as settings_mod
from sentiguard.chaos.ports import free_port
from sentiguard.runtime import control, trust
from sentiguard.settings import ROOT

EMBEDDED_MODEL = ROOT / "models" / "primary"
# Worker start is mostly imports: ~10 s of CPU, more while a training job shares the cores.
START_TIMEOUT_S = 120.0


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    secret: str | None

    @property
    def auth(self) -> dict[str, str]:
        """`Authorization: Bearer <secret>`, which /predict and /_fault need."""
        assert self.secret is not None, "this worker was started without a secret"
        return trust.bearer_headers(self.secret)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines the worker wrote to stdout so far."""
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events() if e.get("event") == name]
        assert found, f"no {name!r} event in the worker log:\n{self.log_path.read_text()}"
        return found[-1]

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Kill the worker's process group (SIGKILL: also ends a hung worker)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_worker(
    tmp: Path,
    env: dict[str, str] | None = None,
    extra_path: Path | None = None,
    with_secret: bool = True,
) -> Worker:
    """Start `python -m sentiguard.primary --index 0` on a free port; do not wait for it.
    With `with_secret`, a fresh secret is written to its run directory first."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    run_dir = (env or {}).get("SENTIGUARD_SERVICE_RUN_DIR", str(tmp / "run"))
    secret = None
    if with_secret:
        run = settings_mod.load(None, environ={}, overrides={"service.run_dir": run_dir})
        secret = control.new_secret(run)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIGUARD_")}
    full_env.update(
        {
            "SENTIGUARD_PRIMARY_BASE_PORT": str(port),
            "SENTIGUARD_SERVICE_RUN_DIR": run_dir,
            "SENTIGUARD_SERVICE_LOG_DIR": str(tmp / "logs"),
            "SENTIGUARD_PRIMARY_MODEL": str(EMBEDDED_MODEL),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
    )
    if extra_path is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(extra_path), full_env.get("PYTHONPATH", "")])
    log_path = tmp / f"worker-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sentiguard.primary", "--index", "0"],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Worker(proc, port, log_path, secret)


def wait_ready(worker: Worker, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
    """Poll /ready until 200; fail early with the log if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(
                f"worker exited with {worker.proc.returncode}:\n{worker.log_path.read_text()}"
            )
        try:
            r = requests.get(worker.url + "/ready", timeout=2)
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"worker not ready in {timeout} s:\n{worker.log_path.read_text()}")

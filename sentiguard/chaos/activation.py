"""`sentiguard up` restarted under load, with and without socket activation (issue 16).

`start_kept(root, activated=True)` runs `up` the way a service manager restarts it, without
systemd as PID 1: `systemd-socket-activate -l 127.0.0.1:PORT` binds the public socket and,
on the first connection, execs `KEEPER`, a shell loop that holds that socket (fd 3) for its
whole life and starts `up` again each time `up` exits. Each `up` gets LISTEN_PID of its own
(the inner `sh` exports its `$$` and execs `up`, which keeps the pid), as systemd sets it
for each start of the service. The loop ends once its stop file exists (`stop_kept`). With
`activated=False` the same loop runs without systemd-socket-activate: each `up` binds its
own socket, the baseline.

`restart_under_load(kept, clients, restarts)`: `sentiguard down` (SIGTERM to `up`, as a
`systemctl restart` sends it) under `clients` closed-loop clients, `restarts` times, each
time waiting (to deadlines) for the loop's next `up` to answer /ready, every worker to be
ready and the load to be answered again. It counts what the clients saw (`gateways.outcome`)
from the first `down` on. Promise under activation: no connection refused, no request lost;
a request sent meanwhile waits in the backlog and is answered by the next `up` (the clients'
timeout, `CLIENT_TIMEOUT_S`, is longer than a restart, so waiting shows as latency).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from sentiguard import settings as settings_mod
from sentiguard.chaos.client import http_request, wait_until
from sentiguard.chaos.gateways import tally
from sentiguard.chaos.load import Load
from sentiguard.chaos.ports import free_port, free_port_block
from sentiguard.chaos.scenarios import wait_for_traffic
from sentiguard.chaos.service import (
    READY_TIMEOUT_S,
    START_ATTEMPTS,
    ServiceExited,
    ServiceHandle,
    kill_groups,
    service_env,
)
from sentiguard.chaos.timeline import Result

ACTIVATE = "systemd-socket-activate"
FD_NAME = "sentiguard"
# $0 is the stop file, "$@" the `up` command line. A failed `up` is started again after a
# second (systemd's RestartSec=), not in a tight loop.
KEEPER = (
    'while [ ! -e "$0" ]; do '
    'sh -c \'export LISTEN_PID=$$; exec "$@"\' sentiguard-up "$@" || sleep 1; '
    "done"
)
# Longer than a whole restart of `up` on busy cores: a request waiting in the backlog is
# answered late, never timed out.
CLIENT_TIMEOUT_S = 300.0


@dataclass
class Kept:
    """`up` run again and again by the keeper loop; `service.proc` is the loop's shell."""

    service: ServiceHandle
    stop_file: Path
    activated: bool

    def up_process(self) -> psutil.Process | None:
        """The `up` running now (a child of the loop), or None between two."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.service.proc.pid).children():
                with contextlib.suppress(psutil.Error):
                    if child.cmdline()[-2:] == ["sentiguard", "up"]:
                        return child
        return None

    def output(self) -> str:
        return self.service.output.read_text(errors="replace")

    def events(self, event: str) -> int:
        """How many lines with this `event` the `up`s have written (`up.out`)."""
        return self.output().count(f'"event":"{event}"')


def keeper_command(port: int, stop_file: Path, activated: bool, env: dict[str, str]) -> list[str]:
    """The keeper loop's command line; under activation, behind systemd-socket-activate,
    which hands its child only TERM, PATH, USER, HOME and what `--setenv` names (like a
    unit's Environment=): every variable of `env` is named."""
    up = [sys.executable, "-m", "sentiguard", "up"]
    loop = ["sh", "-c", KEEPER, str(stop_file), *up]
    if not activated:
        return loop
    tool = shutil.which(ACTIVATE)
    if tool is None:
        raise FileNotFoundError(f"{ACTIVATE} is missing: apt-get install -y systemd")
    passed = [f"--setenv={name}" for name in sorted(env) if not name.startswith("LISTEN_")]
    return [tool, "-l", f"127.0.0.1:{port}", f"--fdname={FD_NAME}", *passed, *loop]


def start_kept(
    root: Path,
    workers: int = 1,
    activated: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Kept:
    """The keeper loop on free ports, run/log dirs under `root`; returns once every worker
    is ready (started again on new ports after a port clash, like `start_service`)."""
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        values: dict[str, Any] = {
            "gateway.host": "127.0.0.1",
            "gateway.port": free_port(),
            "primary.base_port": free_port_block(workers),
            "primary.workers": workers,
            "service.run_dir": str(root / "run"),
            "service.log_dir": str(root / "logs"),
            "watchdog.start_timeout_s": 300.0,
            **(overrides or {}),
        }
        env = service_env(values)
        settings = settings_mod.load(None, environ=env)
        stop_file = root / "keeper.stop"
        stop_file.unlink(missing_ok=True)
        output = root / "up.out"
        command = keeper_command(settings.gateway.port, stop_file, activated, env)
        with output.open("wb") as out:  # the child holds its own copy
            proc = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        service = ServiceHandle(proc, root, env, settings, time.monotonic(), output)
        kept = Kept(service, stop_file, activated)
        try:
            # systemd-socket-activate execs the loop on the first connection: these polls.
            ready = functools.partial(_started, kept)
            wait_until(ready, READY_TIMEOUT_S, "every primary worker ready", 0.5)
            return kept
        except ServiceExited as e:
            stop_kept(kept)
            if not (e.port_clash and attempt < START_ATTEMPTS):
                raise
            with contextlib.suppress(OSError):
                output.rename(root / f"up.out.clash{attempt}")
        except BaseException:
            stop_kept(kept)
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _started(kept: Kept) -> bool:
    """Every worker ready; ServiceExited at once when the loop or an `up` failed."""
    service = kept.service
    failed = service.proc.poll() is not None or kept.events("listen_failed") > 0
    if failed or service.port_clash():
        raise ServiceExited(
            f"the keeper loop or its `up` failed to start\n{service.diagnostics()}",
            service.port_clash(),
        )
    return service.all_ready()


def stop_kept(kept: Kept) -> list[psutil.Process]:
    """End the loop: the stop file, then `sentiguard down` for whichever `up` runs (again
    each second, in case one was starting); waits for the loop to exit, then kills what is
    left. Returns the processes that outlived the stop."""
    service = kept.service
    graceful = float(service.settings.service.graceful_timeout_s)
    seen = {p.pid: p for p in service.tree()}
    kept.stop_file.touch()
    deadline = time.monotonic() + 2 * graceful + 30
    while service.proc.poll() is None and time.monotonic() < deadline:
        seen.update((p.pid, p) for p in service.tree())
        if kept.up_process() is not None:
            service.cli("down", timeout=graceful + 30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.proc.wait(timeout=1.0)
    seen.pop(service.proc.pid, None)
    _, alive = psutil.wait_procs(list(seen.values()), timeout=1.0)
    orphans = [p for p in alive if _running(p)]
    kill_groups([service.proc.pid, *seen])
    with contextlib.suppress(subprocess.TimeoutExpired):
        service.proc.wait(timeout=5.0)
    return orphans


def _running(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def socket_inode(pid: int, fd: int) -> str:
    """What `/proc/PID/fd/FD` points at, e.g. `socket:[12345]`: one kernel socket, one name."""
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def _next_up(kept: Kept, old_pid: int) -> psutil.Process | None:
    p = kept.up_process()
    return p if p is not None and p.pid != old_pid else None


def _gateway_ready(port: int) -> bool:
    return http_request(port, "GET", "/ready", timeout=2.0).status == 200


def restart_under_load(
    kept: Kept,
    clients: int = 8,
    restarts: int = 1,
    timeout_s: float = READY_TIMEOUT_S,
) -> Result:
    """`restarts` times `sentiguard down` under `clients` closed-loop clients, each time
    until the next `up` serves with every worker ready; counts from the first `down` on."""
    service = kept.service
    graceful = float(service.settings.service.graceful_timeout_s)
    name = "up_restart_" + ("activated" if kept.activated else "plain")
    start = time.monotonic()
    down_s: list[float] = []
    back_s: list[float] = []
    pids: list[int] = []
    first: float | None = None
    with Load(service.port, clients, timeout_s=CLIENT_TIMEOUT_S) as load:
        wait_for_traffic(service, 4 * clients)
        for _ in range(restarts):
            old = kept.up_process()
            assert old is not None, f"no `up` running under the keeper loop\n{kept.output()}"
            at = time.monotonic()
            first = at if first is None else first
            down = service.cli("down", timeout=graceful + 30)
            assert down.returncode == 0, f"`sentiguard down`: {down.stdout}{down.stderr}"
            down_s.append(time.monotonic() - at)
            new = wait_until(
                functools.partial(_next_up, kept, old.pid),
                timeout_s,
                "the keeper loop to start the next `up`",
            )
            # The old `up` has exited with every program: only the new one answers now.
            wait_until(lambda: _gateway_ready(service.port), timeout_s, "the next `up`'s /ready")
            back_s.append(time.monotonic() - at)
            pids.append(new.pid)
            service.wait_ready(timeout_s)
            wait_for_traffic(service, 4 * clients)
        load.stop()
    result = Result(name, time.monotonic() - start, load.snapshot())
    after = [s for s in result.samples if first is not None and s.start + s.latency_s >= first]
    counts = tally(after)
    result.extra.update(
        activated=kept.activated,
        clients=clients,
        restarts=restarts,
        up_pids=pids,
        outcomes_after_first_down=counts,
        ok=counts.get("200", 0),
        refused=counts.get("refused", 0),
        failed=sum(n for k, n in counts.items() if not k.isdigit() and k != "refused"),
        longest_wait_s=round(max((s.latency_s for s in after), default=0.0), 2),
        down_s=[round(d, 2) for d in down_s],
        serving_again_s=[round(b, 2) for b in back_s],
        listener_adopted=kept.events("listener_adopted"),
    )
    return result


def summary_line(result: Result) -> dict[str, Any]:
    """The figures docs/resilience.md quotes for this scenario."""
    keys = ("restarts", "clients", "ok", "refused", "failed", "longest_wait_s", "serving_again_s")
    return {"scenario": result.scenario, **{k: result.extra[k] for k in keys}}

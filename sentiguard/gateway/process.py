"""`python -m sentiguard.gateway [--index I]`: gateway process I (its apps are app.py,
control_app.py).

Serves the public app with waitress (`gateway.threads` threads; the server is built by
http_server.py) and the control app on `<run_dir>/control_I.sock` (mode 0600) beside it.
Under `sentiguard up`, supervisord runs `gateway.processes` of these (`gateway_I`), all
accepting on the one listening socket `up` holds and hands over at start
(`runtime.listener.receive`); each routes with its share of every worker's capacity
(`siblings.capacity_share`) and answers /status and /metrics for all of them (`siblings`).
Run alone (no `up`), it binds `gateway.host:gateway.port` itself and is the whole service.
Settings come from the environment `sentiguard up` hands its children (`SENTIGUARD_*`,
`SENTIGUARD_CONFIG`).

Shutdown (`graceful.py`): SIGTERM or SIGINT only sets a flag; the main loop then stops
accepting (a process run alone also shuts its socket down: new connections are refused),
answers /ready with 503 so a load balancer looks elsewhere, answers every request already
accepted with `Connection: close`, and exits 0 once no connection is left, within
`runtime.supervisord.gateway_drain_s` (inside supervisord's stopwaitsecs). When `up` shuts
the shared socket down (the whole service stops), the drain begins at once, before the
SIGTERM.

Exit codes: 0 stopped, `ERROR` (1) a serving thread or a listener died (`listener_died`;
the main loop checks each pass, so supervisord restarts the process rather than showing
it RUNNING without a listener), `CONFIG_ERROR` (78) bad settings or a public bind without
an API key, `MODEL_LOAD_ERROR` (4) the fallback model cannot load (supervisord should not
hammer that; `sentiguard train fallback` fixes it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from sentiguard import settings as settings_mod
from sentiguard.errors import RETRAIN_FALLBACK, ExitCode, ModelLoadError, SettingsError
from sentiguard.gateway.app import create_app, gateway_of
from sentiguard.gateway.control_app import create_control_app
from sentiguard.gateway.graceful import Drain, listeners
from sentiguard.gateway.http_server import build_public_server, listener_fault
from sentiguard.gateway.siblings import Siblings, capacity_share
from sentiguard.logs import exit_now, log_event
from sentiguard.runtime import control, listener
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.paths import RunDir

# Each pass of the main loop waits this long: it notices a listener closed everywhere (the
# service stopping) or a dead serving thread within it.
LOOP_S = 0.1


class GatewayProcess:
    """The process: `run()` serves until `stop()` (or a signal), then drains and returns."""

    def __init__(self, settings: settings_mod.Settings, index: int = 0) -> None:
        self.settings = settings
        self.index = index
        self.should_exit = threading.Event()
        self.app = create_app(settings)
        self.gateway = gateway_of(self.app)
        # The socket `up` holds for every gateway process, or (run alone) our own.
        inherited = listener.receive(settings)
        self.owns_listener = inherited is None
        self._join_service(1 if self.owns_listener else settings.gateway.processes)
        # The public server (poll loop, connection budget, header timeout, JSON refusals)
        # is built in http_server.py.
        self.public: BaseWSGIServer | MultiSocketServer = build_public_server(
            self.app, settings, sockets=inherited
        )
        self.drain = Drain(self.public, self.gateway.log)
        self.drain.install()
        self.control_inode = 0  # of our control socket, set when it is bound
        self.control = self._control_server()
        self.serving: dict[str, threading.Thread] = {}
        self.died: dict[str, str] = {}

    def _join_service(self, processes: int) -> None:
        """Who this process is among `processes`: name, restarts, share, siblings."""
        state = self.gateway.state
        state.process.index = self.index
        state.process.name = sv.gateway_process_name(self.index)
        if os.environ.get("SUPERVISOR_ENABLED"):  # set by supervisord in its children
            state.process.restarts = sv.restarts(self.settings).get(state.process.name, 0)
        # `up` writes it while it runs and removes it on its way out; one left behind by a
        # killed `up` reads as stale, which is what the operator needs to hear.
        state.programs_path = RunDir(self.settings).programs_report
        ceiling = self.settings.gateway.max_in_flight_per_worker
        state.pool.max_in_flight = capacity_share(ceiling, processes, self.index)
        if processes > 1:
            state.siblings = Siblings(self.settings, self.index)

    def _control_server(self) -> BaseWSGIServer | MultiSocketServer:
        path = RunDir(self.settings).control_socket_for(self.index)
        path.unlink(missing_ok=True)  # left by a process of ours that was killed
        path.parent.mkdir(parents=True, exist_ok=True)
        if not RunDir(self.settings).secret.exists():
            control.new_secret(self.settings)  # standalone run, without `sentiguard up`
        app = create_control_app(self.settings, self.gateway.state, self.gateway.log)
        # umask closes the window between bind() and waitress's chmod to 0600.
        old = os.umask(0o077)
        try:
            # poll, like the public server: while the public port holds thousands of
            # connections, a control connection's descriptor passes 1024, where select()
            # would kill this loop.
            server = create_server(
                app,
                unix_socket=str(path),
                unix_socket_perms="600",
                threads=2,
                asyncore_use_poll=True,
            )
        finally:
            os.umask(old)
        self.control_inode = path.stat().st_ino
        return server

    @property
    def port(self) -> int:
        return int(listeners(self.public)[0].effective_port)

    def run(self) -> int:
        for server, name in self._servers():
            thread = threading.Thread(
                target=self._serve, args=(server, name), name=f"waitress-{name}", daemon=True
            )
            self.serving[name] = thread
            thread.start()
        self.gateway.log(
            "gateway_started",
            pid=os.getpid(),
            gateway=self.gateway.state.process.name,
            host=self.settings.gateway.host,
            port=self.port,
            listener="own" if self.owns_listener else "shared, held by `sentiguard up`",
            max_in_flight_per_worker=self.gateway.state.pool.max_in_flight,
            admission=self.settings.gateway.admission,
            control=str(RunDir(self.settings).control_socket_for(self.index)),
            workers=[w.name for w in self.gateway.state.pool.workers],
            fallback_version=self.gateway.state.fallback.version,
            connection_limit=self.public.budget.connection_limit,
            nofile=self.public.budget.nofile,
        )
        while not self.should_exit.wait(LOOP_S):
            if self.drain.listener_closed.is_set():
                self._begin_drain("the listening socket was closed for every gateway process")
            cause = self._serving_fault()
            if cause is not None:
                # Without a listener the process would stay RUNNING under supervisord and
                # answer nothing: exit non-zero so supervisord starts a new one.
                self.gateway.log("listener_died", pid=os.getpid(), reason=cause)
                return ExitCode.ERROR
        return self._shutdown()

    def _servers(self) -> tuple[tuple[BaseWSGIServer | MultiSocketServer, str], ...]:
        return ((self.public, "public"), (self.control, "control"))

    def _serve(self, server: BaseWSGIServer | MultiSocketServer, name: str) -> None:
        """A serving thread's body: waitress's loop, with the cause of its end kept."""
        try:
            server.run()
        except BaseException as e:
            self.died[name] = f"{type(e).__name__}: {e}"
            raise
        self.died.setdefault(name, "its loop returned")

    def _serving_fault(self) -> str | None:
        """Why the process no longer serves: a listener closed (which also ends its loop:
        waitress's loop returns once its map is empty), or a serving thread ended."""
        for server, name in self._servers():
            fault = listener_fault(server)
            if fault is not None:
                return f"{name}: {fault}"
        for name, thread in self.serving.items():
            if not thread.is_alive():
                return f"the {name} serving thread ended: {self.died.get(name, 'no cause known')}"
        return None

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Signal-safe: only sets the flag the main loop waits on."""
        self.should_exit.set()

    def _begin_drain(self, reason: str) -> None:
        self.gateway.state.shutting_down.set()
        # Run alone, this process is the only holder of its socket: shut it down, so new
        # connections are refused at once, like `up` does for the whole service.
        self.drain.begin(reason, close_listener=self.owns_listener)

    def _shutdown(self) -> int:
        state = self.gateway.state
        self._begin_drain("stop signal")
        budget = sv.gateway_drain_s(self.settings)
        open_left = self.drain.wait(time.monotonic() + budget, lambda: state.active_requests)
        left = state.active_requests
        self.gateway.log(
            "gateway_stopped",
            pid=os.getpid(),
            gateway=state.process.name,
            in_flight_left=left,
            open_connections=open_left,
            reason="graceful" if not (left or open_left) else f"drain budget {budget:g} s passed",
        )
        # No gateway.close(): the process ends right after (exit_now), and its poller
        # threads are daemons. Joining them would wait out a /ready poll to a worker that
        # is stopping at the same time, past supervisord's stopwaitsecs, into a SIGKILL.
        # Only our own: a successor started before we stopped (`up` replacing the programs
        # of a supervisord that died) has bound the same path already.
        path = RunDir(self.settings).control_socket_for(self.index)
        with contextlib.suppress(OSError):
            if path.stat().st_ino == self.control_inode:
                path.unlink()
        return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sentiguard.gateway", description=__doc__)
    parser.add_argument("--index", type=int, default=0, help="gateway process number I")
    args = parser.parse_args(argv)
    try:
        settings = settings_mod.load()
        server = GatewayProcess(settings, args.index)
    except SettingsError as e:
        log_event("gateway_config_error", reason=str(e))
        print(f"sentiguard gateway: {e}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    except ModelLoadError as e:
        log_event(
            "fallback_load_failed",
            cause=e.cause,
            reason=str(e),
            fix=f"run `{RETRAIN_FALLBACK}`, or point fallback.model at a trained model",
        )
        return ExitCode.MODEL_LOAD_ERROR
    except OSError as e:
        log_event("gateway_bind_failed", reason=str(e))
        print(
            f"sentiguard gateway: cannot listen: {e}. Hint: is another process on port "
            f"{settings.gateway.port}? Choose another with SENTIGUARD_GATEWAY_PORT.",
            file=sys.stderr,
        )
        return ExitCode.ERROR
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    return server.run()


def run() -> NoReturn:
    """`python -m sentiguard.gateway`: `main()`, then exit without interpreter teardown
    (see `exit_now`: it would join threads still polling a stopping worker)."""
    exit_now(main())

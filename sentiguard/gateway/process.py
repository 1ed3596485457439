"""`python -m sentiguard.gateway`: the gateway process (its apps are app.py, control_app.py).

Serves the public app with waitress (`gateway.threads` threads) on
`gateway.host:gateway.port`, and the control app on `<run_dir>/control.sock` (mode 0600)
beside it. Settings come from the environment `sentiguard up` hands its children
(`SENTIGUARD_*`, `SENTIGUARD_CONFIG`).

Shutdown (SIGTERM or SIGINT): the handler only sets a flag. The main loop then stops
accepting connections, answers /ready with 503 so a load balancer looks elsewhere, waits
for in-flight requests up to `service.graceful_timeout_s`, and exits 0.

Exit codes: 0 stopped, `CONFIG_ERROR` (78) bad settings or a public bind without an API
key, `MODEL_LOAD_ERROR` (4) the fallback model cannot load (supervisord should not
hammer that; `sentiguard train fallback` fixes it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import NoReturn

from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from sentiguard import settings as settings_mod
from sentiguard.errors import ExitCode, ModelLoadError, SettingsError
from sentiguard.gateway.app import create_app, gateway_of
from sentiguard.gateway.control_app import create_control_app
from sentiguard.logs import exit_now, log_event
from sentiguard.runtime import control
from sentiguard.runtime.paths import RunDir

DRAIN_POLL_S = 0.05


class GatewayProcess:
    """The process: `run()` serves until `stop()` (or a signal), then drains and returns."""

    def __init__(self, settings: settings_mod.Settings) -> None:
        self.settings = settings
        self.should_exit = threading.Event()
        self.app = create_app(settings)
        self.gateway = gateway_of(self.app)
        g = settings.gateway
        # waitress refuses bodies above its own limit with a plain-text 413; keep it above
        # ours so the app answers in the JSON error shape.
        self.public: BaseWSGIServer | MultiSocketServer = create_server(
            self.app,
            host=g.host,
            port=g.port,
            threads=g.threads,
            connection_limit=max(1000, 4 * g.threads),
            max_request_body_size=4 * g.max_body_bytes + 65536,
            ident="sentiguard",
            expose_tracebacks=False,
        )
        self.control = self._control_server()

    def _control_server(self) -> BaseWSGIServer | MultiSocketServer:
        path = RunDir(self.settings).control_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if not RunDir(self.settings).secret.exists():
            control.new_secret(self.settings)  # standalone run, without `sentiguard up`
        app = create_control_app(self.settings, self.gateway.state, self.gateway.log)
        # umask closes the window between bind() and waitress's chmod to 0600.
        old = os.umask(0o077)
        try:
            return create_server(app, unix_socket=str(path), unix_socket_perms="600", threads=2)
        finally:
            os.umask(old)

    @property
    def port(self) -> int:
        return int(_listeners(self.public)[0].effective_port)

    def run(self) -> int:
        for server, name in ((self.public, "public"), (self.control, "control")):
            threading.Thread(target=server.run, name=f"waitress-{name}", daemon=True).start()
        self.gateway.log(
            "gateway_started",
            pid=os.getpid(),
            host=self.settings.gateway.host,
            port=self.port,
            control=str(RunDir(self.settings).control_socket),
            workers=[w.name for w in self.gateway.state.pool.workers],
            fallback_version=self.gateway.state.fallback.version,
        )
        while not self.should_exit.wait(0.5):
            pass
        return self._shutdown()

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Signal-safe: only sets the flag the main loop waits on."""
        self.should_exit.set()

    def _shutdown(self) -> int:
        state = self.gateway.state
        state.shutting_down.set()
        self._stop_accepting()
        timeout = float(self.settings.service.graceful_timeout_s)
        deadline = time.monotonic() + timeout
        while state.active_requests and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)
        left = state.active_requests
        self.gateway.log(
            "gateway_stopped",
            pid=os.getpid(),
            in_flight_left=left,
            reason="graceful" if left == 0 else f"graceful timeout {timeout:g} s passed",
        )
        # No gateway.close(): the process ends right after (exit_now), and its poller
        # threads are daemons. Joining them would wait out a /ready poll to a worker that
        # is stopping at the same time, past supervisord's stopwaitsecs, into a SIGKILL.
        RunDir(self.settings).control_socket.unlink(missing_ok=True)
        return ExitCode.OK

    def _stop_accepting(self) -> None:
        for server in _listeners(self.public):
            server.accepting = False
            # On Linux, shutdown() of a listening socket refuses new connections at once
            # instead of leaving them in the backlog until the process exits.
            with contextlib.suppress(OSError):
                server.socket.shutdown(socket.SHUT_RDWR)
            server.pull_trigger()


def _listeners(server: BaseWSGIServer | MultiSocketServer) -> list[BaseWSGIServer]:
    """The listening servers: one, or several when a host name resolves to several addresses."""
    if isinstance(server, BaseWSGIServer):
        return [server]
    return [s for s in server.map.values() if isinstance(s, BaseWSGIServer)]


def main() -> int:
    try:
        settings = settings_mod.load()
        server = GatewayProcess(settings)
    except SettingsError as e:
        log_event("gateway_config_error", reason=str(e))
        print(f"sentiguard gateway: {e}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    except ModelLoadError as e:
        log_event(
            "fallback_load_failed",
            cause=e.cause,
            reason=str(e),
            fix="run `sentiguard train fallback`, or point fallback.model at a trained model",
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

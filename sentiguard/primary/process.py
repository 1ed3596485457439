"""`python -m sentiguard.primary --index I`: one primary worker process (its app is app.py).

Serves 127.0.0.1:(primary.base_port + I) (`sentiguard.runtime.endpoints`) from this very
process (no wrapper, no child), so the pid supervisord reports is the pid that answers.
The port opens first, answering /ready with 503 "loading" (and /live 200); then the
heavy imports, the model, the known-answer probe, and the memory measure (the full-load
batch on every lane: footprint.py); only then /ready says 200. Start-up is logged in
phases (imports vs model) with memory; `worker_ready` carries the measure.

Exit codes: 0 after SIGTERM/SIGINT (in-flight requests finish first, up to a deadline);
4 (ExitCode.MODEL_LOAD_ERROR) when the model cannot load or fails its probe, after one
`model_load_failed` JSON line naming the cause and the fix; 1 when the port is taken;
78 on a bad setting.

The per-`up` secret (`<run_dir>/secret`, written by `sentiguard up`) is read once, at
start (`sentiguard.runtime.trust`). A worker started without it does not exit: it logs
`secret_missing` with the fix, loads and serves as usual, but refuses /predict and
/_fault to everyone (401) and gives no proof in /ready, so no gateway routes to it.
Exiting instead would not help anyone: the watchdog restarts a worker that exits with
any code but 4 after a backoff, which would reload the model again and again for a file
that only a new `sentiguard up` writes; and 4 means "the model cannot load", which this
is not. /health keeps passing, so the watchdog leaves it alone, and the gateway logs
`worker_not_ours` for its port (with `"proof_error": "no_secret"` in what answered).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from sentiguard import settings as settings_mod
from sentiguard.errors import ExitCode, ModelLoadError, SettingsError
from sentiguard.logs import exit_now, log_event
from sentiguard.primary import footprint
from sentiguard.primary.app import create_app
from sentiguard.primary.source import FIX_RETRAIN, preflight, with_reload_override
from sentiguard.primary.state import WorkerState, memory_mb
from sentiguard.runtime import endpoints, trust

if TYPE_CHECKING:
    from sentiguard.primary.inference import PrimaryModel

TICK_S = 0.5


class WorkerProcess:
    """The process: `run()` starts serving, loads, then loops until a stop signal."""

    def __init__(self, settings: settings_mod.Settings, index: int) -> None:
        self.settings = settings
        self.index = index
        address = endpoints.worker(settings, index)
        self.name = address.name
        self.port = address.port
        self.state = WorkerState(settings, index, self._log, trust.load_secret(settings))
        self._stop = threading.Event()
        self._ignored_signals = 0
        self._started = time.perf_counter()

    def _log(self, event: str, **fields: object) -> None:
        log_event(event, worker=self.name, **fields)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here; the loop does the work. A hung worker ignores SIGTERM, as a
        # process stuck in a C call would: only SIGKILL ends it.
        if self.state.faults.hanging():
            self._ignored_signals += 1
            return
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # Yield the CPU to the gateway (see primary.nice): under overload it must keep
        # routing and answering from the fallback while the workers saturate the cores.
        os.nice(self.settings.primary.nice)
        if self.state.secret is None:
            self._log(
                "secret_missing",
                path=trust.secret_path(self.settings),
                reason="no per-up secret at start: /predict and /_fault refuse every caller",
                fix="start the service with `sentiguard up`, which writes the secret",
            )
        server = self._serve()
        if server is None:
            return ExitCode.ERROR
        code = self._load()
        if code is not None:
            server.close()
            return code
        while not self._stop.wait(TICK_S):
            if self._ignored_signals:
                self._log("signal_ignored", reason="hang_fault", count=self._ignored_signals)
                self._ignored_signals = 0
        return self._shutdown(server)

    def _serve(self) -> Any:
        from waitress.server import create_server

        app = create_app(self.state)
        g = self.settings.gateway
        try:
            server = create_server(
                app,
                host=endpoints.WORKER_HOST,
                port=self.port,
                threads=self.settings.primary.server_threads,
                # Each thread of each gateway process may keep a connection here (the
                # gateway's WorkerClient pools one per thread and worker), plus the pollers
                # and the watchdog's probes. Past waitress's default of 100 the worker would
                # stop accepting, and the watchdog would take the silence for a hang.
                connection_limit=max(100, g.processes * (g.threads + 4) + 32),
                ident="sentiguard-primary",
            )
        except OSError as e:
            self._log(
                "port_in_use",
                port=self.port,
                reason=str(e),
                fix="stop the process on that port (`ss -ltnp`) or change primary.base_port",
            )
            return None
        threading.Thread(target=server.run, name="http", daemon=True).start()
        self._log("worker_listening", port=self.port, pid=os.getpid())
        return server

    def _load(self) -> int | None:
        """Import, load, probe. None when ready; an exit code when the worker must stop."""
        from sentiguard.primary import model as model_mod

        t0 = time.perf_counter()
        backend = self.settings.primary.backend
        try:
            preflight(self.settings)  # a missing file fails now, not after imports
            model_mod.import_backend(backend)
            t1 = time.perf_counter()
            self._log("imports_done", backend=backend, import_s=round(t1 - t0, 2), **memory_mb())
            model = model_mod.load_model(self.settings, shared_choice=True)
        except ModelLoadError as e:
            return self._load_failed(e)
        t2 = time.perf_counter()
        self._log(
            "model_loaded",
            model_version=model.version,
            load_s=round(t2 - t1, 2),
            precision=model.precision_report,
            **memory_mb(),
        )
        self.state.attach(model)
        passed, probe_ms, ps = self.state.probe()
        if not passed:
            return self._load_failed(
                ModelLoadError(
                    f"{model.name} loaded but gives wrong answers to the known-answer probe "
                    f"(p_positive {ps}). Fix: {FIX_RETRAIN}.",
                    "corrupt",
                )
            )
        if self._stop.is_set():
            return ExitCode.OK  # asked to stop while loading
        self.state.footprint = self._measure_footprint(model)
        if self._stop.is_set():
            return ExitCode.OK
        self.state.ready = True
        self._log(
            "worker_ready",
            pid=os.getpid(),
            port=self.port,
            model=model.name,
            model_version=model.version,
            precision=model.precision_report,
            start_to_ready_s=round(time.perf_counter() - self._started, 2),
            since_exec_s=round(time.time() - _process_start(), 2),
            cpu_s=_cpu_seconds(),  # wall time on an idle machine; start-up is one thread
            import_s=round(t1 - t0, 2),
            load_s=round(t2 - t1, 2),
            probe_ms=probe_ms,
            batch_lanes=self.state.batcher.lanes if self.state.batcher else None,
            torch_threads=self.settings.primary.torch_threads,
            **memory_mb(),
            **_footprint_fields(self.state.footprint),
        )
        return None

    def _measure_footprint(self, model: PrimaryModel) -> footprint.Footprint | None:
        """Memory at rest and at full load (footprint.py); None, logged, if it failed:
        the worker still serves, and the watchdog falls back to a configured limit."""
        primary = self.settings.primary
        assert self.state.batcher is not None
        try:
            return footprint.measure(
                self.state.batcher,
                getattr(model, "tokenizer", None),
                primary.max_batch_size,
                primary.sequence_length,
            )
        except Exception as e:
            self._log(
                "memory_measure_failed",
                reason=f"{type(e).__name__}: {e}",
                batch=primary.max_batch_size,
                tokens=primary.sequence_length,
                fix="lower primary.max_batch_size or primary.sequence_length if this is "
                "out of memory; watchdog.memory_limit_mb = auto has no measure to follow",
            )
            return None

    def _load_failed(self, e: ModelLoadError) -> int:
        message = str(e)
        fix = message.split("Fix: ", 1)[1].rstrip(".") if "Fix: " in message else ""
        self._log(
            "model_load_failed",
            cause=e.cause,
            fix=fix,
            reason=message,
            model=self.settings.primary.model,
            exit_code=int(ExitCode.MODEL_LOAD_ERROR),
        )
        return ExitCode.MODEL_LOAD_ERROR

    def _shutdown(self, server: Any) -> int:
        """Stop taking work, let in-flight requests finish up to the deadline, exit 0."""
        state = self.state
        state.draining = True
        deadline = time.monotonic() + max(1.0, self.settings.service.graceful_timeout_s - 2)
        self._log("worker_stopping", in_flight=state.in_flight)
        while state.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        if state.batcher is not None:
            state.batcher.stop(max(0.0, deadline - time.monotonic()))
        left = state.in_flight
        server.close()
        self._log("worker_stopped", unfinished=left)
        return ExitCode.OK


def _footprint_fields(measured: footprint.Footprint | None) -> dict[str, object]:
    if measured is None:
        return {"memory": None}
    return {"memory": measured.as_json(), "memory_measure_ms": measured.measure_ms}


def _process_start() -> float:
    import psutil

    return float(psutil.Process().create_time())


def _cpu_seconds() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return round(times.user + times.system, 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sentiguard.primary", description=__doc__)
    parser.add_argument("--index", type=int, default=0, help="worker number I (port base_port + I)")
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings (default: $SENTIGUARD_CONFIG)"
    )
    args = parser.parse_args(argv)
    try:
        settings = with_reload_override(settings_mod.load(args.config))
    except SettingsError as e:
        log_event("config_error", worker=endpoints.worker_name(args.index), reason=str(e))
        return ExitCode.CONFIG_ERROR
    return int(WorkerProcess(settings, args.index).run())


def run() -> NoReturn:
    """`python -m sentiguard.primary`: `main()`, then exit without interpreter teardown
    (see `exit_now`: seconds of CPU with torch loaded, past supervisord's stop wait)."""
    exit_now(main())

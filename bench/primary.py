"""Primary worker benchmark: micro-batching vs one pipeline call per request.

    python bench/primary.py [--seconds 6] [--clients 1,4,16]
    python bench/primary.py --long-text    # truncation vs sliding windows on long reviews

Starts, side by side on the same model and settings:

- "batched": the real worker (`python -m sentiguard.primary`): requests coalesced into
  length-bucketed forward passes, one batch lane per core, the last layer run for [CLS]
  only;
- "unbatched": the same worker with primary.max_batch_size = 1;
- "per-request": the common design, a minimal Flask app (same waitress server, same
  thread counts) that calls ModelScope's `pipeline(text)` once per request, padded to
  sequence_length as its preprocessor does.

Each is driven by 1, 4 and 16 concurrent keep-alive clients on 127.0.0.1 sending one
held-out review per request, for a fixed time per level. Prints throughput, p50/p99
latency and the batched/per-request ratios, then the worker's start-up split (imports vs
model load) and memory (after imports vs after the model). Ratios are the result; the
absolute numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentiguard import settings as settings_mod  # noqa: E402
from sentiguard.data import split  # noqa: E402
from sentiguard.runtime import control, trust  # noqa: E402

START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the per-request baseline server ----------------------------------------------------


def serve_per_request(port: int) -> None:
    """A minimal "Flask wraps pipeline" app: one pipeline(text) call per request."""
    from flask import Flask, jsonify, request
    from waitress import serve

    from sentiguard.primary.model import load_model

    settings = settings_mod.load()
    model = load_model(settings)  # sets torch threads like the worker; same pipeline
    app = Flask("per-request")

    @app.post("/predict")
    def predict() -> Any:
        texts = request.get_json(force=True)["texts"]
        # predict_pipeline: pipeline(text) per text, under the chosen arithmetic's context
        # (bf16 weights need autocast; a bare pipeline call fails on them).
        results = [{"p_positive": p.p_positive} for p in model.predict_pipeline(texts)]
        return jsonify(results=results, pid=os.getpid())

    @app.get("/ready")
    def ready() -> Any:
        return jsonify(ready=True, pid=os.getpid())

    serve(app, host="127.0.0.1", port=port, threads=settings.primary.server_threads)


# --- process handling ---------------------------------------------------------------------


class Server:
    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str]) -> None:
        self.name, self.port = name, port
        self.log = Path(f"/tmp/sentiguard-bench-{name}-{port}.log")
        self.started = time.perf_counter()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ready_s = 0.0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    self.ready_s = time.perf_counter() - self.started
                    return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit(f"{self.name} not ready in {START_TIMEOUT_S} s; see {self.log}")

    def events(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                found[event["event"]] = event
        return found

    def rss_mb(self) -> float:
        import psutil

        return round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


# --- load generation -------------------------------------------------------------------


def drive(
    port: int, texts: list[str], clients: int, seconds: float, secret: str
) -> tuple[list[float], int]:
    """`clients` threads, each a keep-alive connection sending one text per request, with
    the worker's `Authorization: Bearer <secret>` (it refuses /predict without).

    Returns the latencies (s) of the requests answered in the measured window, and errors.
    """
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_at = time.perf_counter() + 0.3  # everyone connected before the clock starts
    headers = {"Content-Type": "application/json", **trust.bearer_headers(secret)}
    stop_at = start_at + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        while (now := time.perf_counter()) < stop_at:
            body = json.dumps({"texts": [texts[i % len(texts)]]}, ensure_ascii=False).encode()
            i += clients
            t0 = time.perf_counter()
            conn.request("POST", "/predict", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors[k] += 1
            elif now >= start_at:
                latencies[k].append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for per in latencies for x in per], sum(errors)


def compare(
    servers: dict[str, Server],
    texts: list[str],
    clients: int,
    seconds: float,
    rounds: int,
    secret: str,
) -> dict[str, dict[str, float]]:
    """Alternate short slices between the servers, so load from other processes on a
    shared machine falls on all alike; then pool each server's slices. Also counts the
    server process's CPU per answered request, which other load hardly changes."""
    import psutil

    pooled: dict[str, list[float]] = {name: [] for name in servers}
    errors = dict.fromkeys(servers, 0)
    cpu = dict.fromkeys(servers, 0.0)
    for _ in range(rounds):
        for name, server in servers.items():
            proc = psutil.Process(server.proc.pid)
            before = sum(proc.cpu_times()[:2])
            latencies, failed = drive(server.port, texts, clients, seconds / rounds, secret)
            cpu[name] += sum(proc.cpu_times()[:2]) - before
            pooled[name] += latencies
            errors[name] += failed
    out = {}
    for name, latencies in pooled.items():
        done = sorted(latencies)
        out[name] = {
            "rps": len(done) / seconds,
            "p50_ms": 1000 * done[len(done) // 2],
            "p99_ms": 1000 * done[min(len(done) - 1, int(len(done) * 0.99))],
            # includes the 0.3 s connect window per slice: a slight overestimate for all
            "cpu_ms": 1000 * cpu[name] / max(1, len(done)),
            "errors": errors[name],
        }
    return out


def bench(seconds: float, levels: list[int], rounds: int) -> None:
    # A run directory of its own with a fresh secret, as `sentiguard up` writes one: the
    # workers read it at start and refuse /predict without it. Never the service's own
    # run directory, whose secret a running service depends on.
    run_dir = tempfile.mkdtemp(prefix="sentiguard-bench-run-")
    settings = settings_mod.load(overrides={"service.run_dir": run_dir})
    secret = control.new_secret(settings)
    texts = split().heldout.texts
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIGUARD_")}
    env |= settings.as_env() | {"PYTHONUNBUFFERED": "1", "MODELSCOPE_LOG_LEVEL": "30"}
    worker = [sys.executable, "-m", "sentiguard.primary", "--index", "0"]
    servers: dict[str, Server] = {}
    for name, argv, extra in (
        ("batched", worker, {}),
        # Same worker, batching off: separates what batching gives from what the
        # length-bucketed padding gives.
        ("unbatched", worker, {"SENTIGUARD_PRIMARY_MAX_BATCH_SIZE": "1"}),
        ("per-request", [sys.executable, __file__, "--serve-per-request"], {}),
    ):
        port = free_port()
        argv = [*argv, str(port)] if name == "per-request" else argv
        # Each server runs alone on the machine, as the only worker, so all three get
        # every core: the batched worker as batch lanes (primary.batch_lanes = 0), the
        # per-request server as concurrent pipeline calls.
        alone = {"SENTIGUARD_PRIMARY_BASE_PORT": str(port), "SENTIGUARD_PRIMARY_WORKERS": "1"}
        servers[name] = Server(name, argv, port, env | extra | alone)
    try:
        for server in servers.values():
            server.wait_ready()
        print(
            f"model {settings.primary.model}  sequence_length "
            f"{settings.primary.sequence_length}  max_batch_size "
            f"{settings.primary.max_batch_size}  max_batch_wait_ms "
            f"{settings.primary.max_batch_wait_ms}  batch_lanes "
            f"{servers['batched'].events()['worker_ready']['batch_lanes']}  torch_threads "
            f"{settings.primary.torch_threads}  server_threads "
            f"{settings.primary.server_threads}  cores {os.cpu_count()}\n"
            f"{seconds:g} s per level and server, in {rounds} alternating slices; "
            f"one held-out review per request"
        )
        compare(servers, texts, 4, 1.0, 1, secret)  # warm all up the same way
        header = (
            f"{'clients':>7} {'server':>12} | {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'CPU ms':>7} | "
            f"{'batched rps ratio':>17} {'batched p99 ratio':>17} {'CPU saved ratio':>16}"
        )
        print(header)
        print("-" * len(header))
        for clients in levels:
            result = compare(servers, texts, clients, seconds, rounds, secret)
            b = result["batched"]
            for name, r in result.items():
                ratios = (
                    f"{b['rps'] / r['rps']:>16.2f}x {b['p99_ms'] / r['p99_ms']:>16.2f}x "
                    f"{r['cpu_ms'] / b['cpu_ms']:>15.2f}x"
                    if name != "batched"
                    else ""
                )
                print(
                    f"{clients:>7} {name:>12} | {r['rps']:>7.1f} {r['p50_ms']:>7.1f} "
                    f"{r['p99_ms']:>7.1f} {r['cpu_ms']:>7.2f} | {ratios}"
                    + (f"  errors {r['errors']}" if r["errors"] else "")
                )
        print(
            "(CPU ms: server CPU per answered request; rps ratio: batched / that server, "
            "higher is better; p99 ratio: lower is better; CPU saved: that server's CPU per "
            "request / batched's.\n On a shared machine the CPU ratio is the steadier one: the "
            "OS shares cores per thread, so 16 threads each running a pipeline get more of a "
            "busy machine than the batched worker's few lanes do.)"
        )
        batched = servers["batched"]
        events = batched.events()
        imports, loaded, ready = (
            events["imports_done"],
            events["model_loaded"],
            events["worker_ready"],
        )
        print(
            f"worker start to ready {ready['start_to_ready_s']:.1f} s "
            f"(since exec {ready['since_exec_s']:.1f} s; {ready['cpu_s']:.1f} s of CPU): "
            f"imports {ready['import_s']:.1f} s, model load {ready['load_s']:.1f} s, "
            f"probe {ready['probe_ms']:.0f} ms"
        )
        print(
            f"worker RSS: {imports['rss_mb']:.0f} MB after imports, "
            f"+{loaded['rss_mb'] - imports['rss_mb']:.0f} MB for the model, "
            f"{ready['rss_mb']:.0f} MB ready, {batched.rss_mb():.0f} MB after the run "
            f"(USS {ready['uss_mb']:.0f} MB ready)"
        )
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


# --- long texts ------------------------------------------------------------------------


def long_text() -> None:
    """Accuracy on held-out reviews longer than sequence_length: truncate vs windows."""
    from sentiguard.primary.model import load_model

    settings = settings_mod.load()
    model = load_model(settings)
    heldout = split().heldout
    room = model.sequence_length - model.tokenizer.num_special_tokens_to_add()
    lengths = [
        len(ids) for ids in model.tokenizer(heldout.texts, add_special_tokens=False)["input_ids"]
    ]
    picked = [i for i, n in enumerate(lengths) if n > room]
    texts = [heldout.texts[i] for i in picked]
    labels = [heldout.labels[i] for i in picked]
    print(
        f"{model.version}: {len(picked)} of {len(heldout)} held-out reviews exceed "
        f"{model.sequence_length} tokens "
        f"(median {statistics.median(lengths[i] for i in picked):.0f})"
    )
    for mode in ("truncate", "window"):
        model.long_text = mode
        t0 = time.perf_counter()
        answers = model.predict(texts)
        took = time.perf_counter() - t0
        correct = sum(
            (a.p_positive >= 0.5) == bool(y) for a, y in zip(answers, labels, strict=True)
        )
        print(
            f"  {mode:>8}: accuracy {correct / len(texts):.4f} ({correct}/{len(texts)}), "
            f"{1000 * took / len(texts):.1f} ms per long review"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per level")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating slices per level and server"
    )
    parser.add_argument("--long-text", action="store_true", help="truncate vs window accuracy")
    parser.add_argument("--serve-per-request", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_per_request:
        serve_per_request(args.serve_per_request)
    elif args.long_text:
        long_text()
    else:
        bench(args.seconds, [int(c) for c in args.clients.split(",")], args.rounds)


if __name__ == "__main__":
    main()

"""Host resources: memory for the configured workers, writable log and run directories."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil

from sentiguard.doctor.report import Result, fail, ok, warn
from sentiguard.primary.source import WEIGHT_SUFFIXES, resolve_source, with_reload_override
from sentiguard.runtime.memory import sample
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings
from sentiguard.watchdog.limits import auto_limit_mb

# Memory the processes other than the primary workers need. A gateway process with the
# embedded fallback measured ~150 MB RSS after 200 batch requests; 400 leaves room for its 96
# threads each holding a request body of up to gateway.max_body_bytes (2 MB); there are
# gateway.processes of them. supervisord + watchdog (+ `up`) are small Python processes.
# docs/deploy.md, the Kubernetes memory limit and systemd's MemoryMax are derived from these
# numbers (tests/test_deploy.py keeps them in step).
GATEWAY_MB = 400
SUPPORT_MB = 100
# With watchdog.memory_limit_mb = "auto" each worker derives its limit at start from its
# measured peak (watchdog/limits.py); before anything runs, doctor estimates that peak from
# the primary model's weights on disk: a worker's runtime (Python, torch, ModelScope, the
# tokenizer; measured 413 MB USS after a full batch of the embedded model, whose weights
# are 11 MB) plus 1.5 x the weights (held once, plus activations that grow with the
# model's width: a base-size model's 410 MB of weights give a ~1 GB peak).
WORKER_RUNTIME_MB = 400
WEIGHTS_FACTOR = 1.5
# A hub model not downloaded yet: assume base-size weights, what the hub id names.
UNKNOWN_WEIGHTS_MB = 410


def weights_mb(settings: Settings) -> float | None:
    """Size of the primary model's weight files as a worker would load them; None when
    the model is a hub id not on disk (or its directory holds no weights)."""
    source = resolve_source(with_reload_override(settings))
    if source.local_dir is None:
        return None
    files = [f for f in source.local_dir.iterdir() if f.suffix in WEIGHT_SUFFIXES]
    return sum(f.stat().st_size for f in files) / 2**20 if files else None


def worker_limit_mb(settings: Settings) -> tuple[int, str]:
    """One worker's memory limit and how doctor knows it: the configured number, or an
    estimate of the "auto" limit the watchdog derives at start."""
    limit = settings.watchdog.memory_limit_mb
    if isinstance(limit, int):
        return limit, f"{limit} MB (watchdog.memory_limit_mb)"
    try:
        weights = weights_mb(settings)
    except OSError:
        weights = None
    peak = WORKER_RUNTIME_MB + WEIGHTS_FACTOR * (
        weights if weights is not None else UNKNOWN_WEIGHTS_MB
    )
    estimate = int(auto_limit_mb(peak))
    basis = f"{weights:.0f} MB of weights" if weights is not None else "a base-size model"
    return estimate, (
        f"~{estimate} MB (watchdog.memory_limit_mb = auto: estimated from {basis}; each "
        f"worker derives its own at start)"
    )


def memory_budget_mb(settings: Settings) -> int:
    """Memory one instance may use before the watchdog recycles anything: every worker at
    its limit, plus each gateway process (with its fallback) and supervisord + watchdog."""
    workers = settings.primary.workers
    gateways = settings.gateway.processes * GATEWAY_MB
    return workers * worker_limit_mb(settings)[0] + gateways + SUPPORT_MB


def cgroup_available_mb(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """What the container's memory limit still allows (cgroup v2, else v1); None without
    one. psutil reports the host's memory, which a container cannot use past its limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes a huge number for "none"
            return None
        return (int(limit) - usage) / 2**20
    return None


def service_rss_mb(settings: Settings) -> float:
    """RSS of this instance's running supervisord and its process tree (0 when not running).

    A running service already holds its memory: it counts as available to itself, or doctor
    would fail a healthy running service on a host sized for exactly one instance.
    """
    try:
        pid = int(RunDir(settings).supervisord_pid.read_text().strip())
    except (OSError, ValueError):
        return 0.0
    measured = sample(pid)
    return measured.rss_mb if measured is not None else 0.0


def check_memory(settings: Settings, available_mb: float | None = None) -> Result:
    """Available memory (the cgroup's when tighter than the host's) against the budget."""
    note = ""
    if available_mb is None:
        available_mb = psutil.virtual_memory().available / 2**20
        in_cgroup = cgroup_available_mb()
        if in_cgroup is not None:
            available_mb = min(available_mb, in_cgroup)
        running = service_rss_mb(settings)
        if running:
            available_mb += running
            note = f" (incl. {running:.0f} MB the running service holds)"
    need = memory_budget_mb(settings)
    workers = settings.primary.workers
    limit, how = worker_limit_mb(settings)
    detail = (
        f"{available_mb:.0f} MB available{note}; needs {need} MB = {workers} workers x "
        f"{how} + {settings.gateway.processes} gateway "
        f"processes x {GATEWAY_MB} MB + {SUPPORT_MB} supervisord/watchdog"
    )
    if available_mb >= need * 1.2:
        return ok("memory", detail)
    gateways = settings.gateway.processes * GATEWAY_MB
    fits = max(0, int((available_mb - gateways - SUPPORT_MB) // limit))
    # An auto limit follows the model: only a smaller model (or quantize) lowers it.
    smaller = (
        "lower watchdog.memory_limit_mb"
        if isinstance(settings.watchdog.memory_limit_mb, int)
        else "serve a smaller primary model"
    )
    fix = (
        f"free memory, or set primary.workers = {fits} (fits), or {smaller}"
        if fits
        else "free memory or add RAM: not even one worker fits at this limit"
    )
    if available_mb >= need:
        return warn("memory", detail + " (less than 20 % to spare)", fix)
    return fail("memory", detail, fix)


def check_writable(check: str, directory: Path, setting: str) -> Result:
    """Create `directory` if needed and write a file in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-") as f:
            f.write(b"ok")
            f.flush()
    except OSError as e:
        return fail(
            check,
            f"{directory} is not writable: {e.strerror or e}",
            f"make it writable by this user (chown/chmod), or set {setting} elsewhere",
        )
    return ok(check, f"{directory} writable")

"""Every setting sentiguard has, declared once: one frozen dataclass per config section.

A field's annotation is its type; `setting(default, help, validator)` gives the rest. The
loader (`sentiguard.settings.load`) reads these declarations to coerce and validate TOML and
environment values, and callers read typed attributes: `settings.watchdog.memory_limit_mb`
is an `int` to mypy and at run time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentiguard.settings.validators import (
    Validator,
    mb_or_auto,
    niceness,
    non_negative,
    one_of,
    positive,
    tcp_port,
)

ROOT = Path(__file__).resolve().parent.parent.parent
ENV_PREFIX = "SENTIGUARD_"


def project_path(value: str | Path) -> Path:
    """A path setting: relative paths are taken from the project root, not the cwd."""
    path = Path(value)
    return path if path.is_absolute() else ROOT / path


def env_name(section: str, key: str) -> str:
    """The environment variable of a setting: SENTIGUARD_<SECTION>_<KEY>."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def setting(default: Any, help: str, validator: Validator | None = None) -> Any:
    """A declared setting: its default, the help text in conf/ and the README, a validator."""
    return field(default=default, metadata={"help": help, "validator": validator})


@dataclass(frozen=True)
class Gateway:
    """[gateway] the public HTTP API and web UI."""

    host: str = setting(
        "127.0.0.1",
        "Address the gateway binds. Anything beyond loopback needs gateway.api_key "
        "(or gateway.allow_public_without_key for networks already private).",
    )
    port: int = setting(
        5000,
        "Public HTTP port of the gateway.",
        tcp_port,
    )
    processes: int = setting(
        2,
        "Gateway processes accepting on the one public socket, which `sentiguard up` "
        "holds for the service's whole life: a crashed process loses only the requests "
        "in flight on it while the others answer, and connections wait in the socket's "
        "backlog while none runs. Each has its own fallback and its share of "
        "max_in_flight_per_worker.",
        positive,
    )
    threads: int = setting(
        128,
        "Request threads of each gateway process's WSGI server. Must exceed the primary "
        "and fallback capacities together so shedding, not queueing, handles overload.",
        positive,
    )
    deadline_ms: int = setting(
        1500,
        "Longest a request waits for a primary worker before the fallback answers it. "
        "Clients may ask for less with X-Deadline-Ms.",
        positive,
    )
    min_deadline_ms: int = setting(
        50,
        "Shortest deadline a client may ask for with X-Deadline-Ms; below it the request "
        "gets 400 bad_deadline naming this floor. A deadline shorter than any answer "
        "could take only turns work into timeouts.",
        positive,
    )
    max_in_flight_per_worker: int = setting(
        16,
        "Ceiling of the requests sent to one primary worker at once, by the whole service; "
        "below it gateway.admission learns each worker's limit while it serves. More go to "
        "another worker or, when none has room, to the fallback (reason 'overloaded'). "
        "Each gateway process gets its share (16 over 2: 8 each). 16 kept 16 base-size clients "
        "on the primary (104 answers/s; 8 sent the excess to the fallback: 66/s).",
        positive,
    )
    admission: str = setting(
        "aimd",
        "How each worker's concurrency limit (its `capacity` in /status) is learnt below "
        "max_in_flight_per_worker: aimd (+1 while answers come within half the deadline, "
        "x0.9 on a timeout or a slower answer), gradient (Netflix Gradient2: shrinks as "
        "latency rises above 1.5x its long-run average) or fixed (always the ceiling). "
        "bench/admission.py measures them side by side: with the embedded model slowed "
        "150 ms a pass all three sat at the ceiling (36-41 primary answers/s at 16 "
        "clients); with the base-size stand-in at 16 clients gradient read batching's "
        "latency as queueing and fell to 3-4 a worker, aimd held 6-7 and kept its rate "
        "(a busy shared 2-core machine: run bench/admission.py on yours).",
        one_of("aimd", "gradient", "fixed"),
    )
    fallback_capacity: int = setting(
        64,
        "Requests the in-process fallback of each gateway process answers at once; "
        "beyond it that process answers 503 with Retry-After.",
        positive,
    )
    retry_after_s: int = setting(
        1,
        "Retry-After value on a 503 when load is shed.",
        positive,
    )
    max_texts: int = setting(
        256,
        'Most texts in one POST /analyze {"texts": [...]}.',
        positive,
    )
    max_text_chars: int = setting(
        5000,
        "Longest single text, in characters.",
        positive,
    )
    max_body_bytes: int = setting(
        2000000,
        "Largest request body, in bytes.",
        positive,
    )
    max_json_depth: int = setting(
        8,
        "Deepest JSON nesting a request body may have.",
        positive,
    )
    header_timeout_s: float = setting(
        10.0,
        "Seconds a client has to send a whole request header, from the connection's open "
        "(for later requests on a keep-alive connection, from their first byte); slower "
        "connections are closed, so idle or trickling ones cannot hold the gateway's "
        "connection slots.",
        positive,
    )
    body_timeout_s: float = setting(
        20.0,
        "Seconds a request body has from its header's end, plus 1 s for each "
        "body_min_bytes_per_s bytes received (Apache mod_reqtimeout body=20,MinRate=500); "
        "a slower body is answered 408 and closed, so trickling ones cannot hold slots.",
        positive,
    )
    body_min_bytes_per_s: int = setting(
        500,
        "See body_timeout_s: the least rate a body must keep past it. 0: the whole body "
        "within body_timeout_s.",
        non_negative,
    )
    breaker_open_s: float = setting(
        2.0,
        "How long a worker's breaker stays open before a half-open probe request.",
        positive,
    )
    log_text: bool = setting(
        False,
        "Put the review text into the access log (off: only its length).",
    )
    api_key: str = setting(
        "",
        "API key clients send as 'Authorization: Bearer KEY' or 'X-API-Key'. Required "
        "when gateway.host is not loopback.",
    )
    allow_public_without_key: bool = setting(
        False,
        "Allow binding beyond loopback without an API key, for networks already private.",
    )


@dataclass(frozen=True)
class Primary:
    """[primary] the StructBERT workers."""

    model: str = setting(
        "models/primary",
        "Model directory (relative to the project) or ModelScope hub id, e.g. "
        "damo/nlp_structbert_sentiment-classification_chinese-base.",
    )
    backend: str = setting(
        "modelscope",
        "How the worker loads the model: modelscope (pipeline) or transformers.",
        one_of("modelscope", "transformers"),
    )
    workers: int = setting(
        2,
        "Number of primary worker processes.",
        positive,
    )
    base_port: int = setting(
        5101,
        "Loopback port of worker 0; worker i listens on base_port + i.",
        tcp_port,
    )
    sequence_length: int = setting(
        128,
        "Longest input, in tokens, one forward pass sees.",
        positive,
    )
    long_text: str = setting(
        "truncate",
        "Texts longer than sequence_length: truncate (keep the start) or window "
        "(half-overlapping windows whose probabilities are averaged, twice the cost "
        "for long texts). On the embedded model truncate scored 0.8318 on the held-"
        "out split, window 0.8312 (258 vs 257 of its 288 long reviews, `python "
        "bench/primary.py --long-text`); measure again for another model.",
        one_of("truncate", "window"),
    )
    max_batch_size: int = setting(
        32,
        "Most texts coalesced into one forward pass.",
        positive,
    )
    max_batch_wait_ms: float = setting(
        4.0,
        "How long the batcher waits for more requests before running a batch.",
        non_negative,
    )
    batch_lanes: int = setting(
        0,
        "Batches a worker runs at once, each on its own thread with torch_threads "
        "threads; 0: the worker's share of the CPUs this process may run on (CPUs // "
        "primary.workers, at least 1). Set it under a container CPU quota, which the "
        "CPU count does not show.",
        non_negative,
    )
    torch_threads: int = setting(
        1,
        "torch intra-op threads per batch lane. One: two lanes of one thread outran "
        "one lane of two on two cores (primary/batcher.py).",
        positive,
    )
    precision: str = setting(
        "auto",
        "fp32, int8 (dynamic), bf16 (autocast) or auto: at start the fastest the CPU offers on "
        "the probe and 2 x max_batch_size held-out reviews, refusing any moving p_positive > 0.2.",
        one_of("auto", "fp32", "int8", "bf16"),
    )
    quantize: str = setting(
        "auto",
        "Old name of precision, read only while precision is auto: none = fp32, int8 = int8.",
        one_of("auto", "none", "int8"),
    )
    server_threads: int = setting(
        32,
        "HTTP threads of each worker.",
        positive,
    )
    nice: int = setting(
        5,
        "CPU niceness a worker gives itself at start (0-19). Inference is batch work; "
        "the gateway's routing and fallback answers are the latency-critical path, so "
        "on shared cores the workers yield to it.",
        niceness,
    )

    @property
    def model_dir(self) -> Path:
        """The model setting as a local directory (a hub id gives a path that does not exist)."""
        return project_path(self.model)


@dataclass(frozen=True)
class Fallback:
    """[fallback] jieba + scikit-learn, in the gateway."""

    model: str = setting(
        "models/fallback",
        "Directory of the fallback classifier (made by `sentiguard train fallback`).",
    )

    @property
    def model_dir(self) -> Path:
        """The fallback model's directory."""
        return project_path(self.model)


@dataclass(frozen=True)
class Watchdog:
    """[watchdog] memory, hang and crash checks of the workers."""

    interval_s: float = setting(1.0, "Seconds between two rounds of checks.", positive)
    memory_limit_mb: int | str = setting(
        "auto",
        "A worker whose process tree uses more (USS, else RSS) for memory_samples "
        "consecutive samples is recycled. auto: the worker's own measure at start (ready "
        "memory after its largest batch at the longest sequence) plus a margin, so the "
        "limit follows the model; /status shows how it was derived. A number (MB) "
        "overrides it.",
        mb_or_auto,
    )
    memory_critical_mb: int | str = setting(
        "auto",
        "Above this a worker is recycled even when it is the last one ready. auto: "
        "1.5 x memory_limit_mb. A number (MB) overrides it.",
        mb_or_auto,
    )
    memory_samples: int = setting(3, "Samples over the limit in a row that recycle.", positive)
    probe_timeout_ms: int = setting(
        1000, "A GET /live (liveness, every round) unanswered this long is a miss.", positive
    )
    probe_budget_ms: int = setting(
        500,
        "Least budget of the known-answer check (GET /health); the budget is the larger of "
        "this and 3 x the worker's longest recent batch. Slower counts as slow.",
        positive,
    )
    probe_failures: int = setting(
        3,
        "Misses in a row that mean hung (no answer, wrong answer) or, for slow known-answer "
        "checks, a recycle (never of the last ready worker).",
        positive,
    )
    check_interval_s: float = setting(10.0, "Seconds between known-answer checks.", positive)
    progress_floor_s: float = setting(
        10.0,
        "A worker with work that finishes no batch for max(progress_floor_s, progress_factor "
        "x its longest recent batch) is hung. The floor covers one without a measured batch.",
        positive,
    )
    progress_factor: float = setting(
        4.0, "See progress_floor_s: the hang window in the worker's longest batches.", positive
    )
    drain_timeout_s: float = setting(
        3.0, "How long a drained worker may finish in-flight requests, then stops.", non_negative
    )
    start_timeout_s: float = setting(
        60.0, "How long a restarted worker may take to become ready before it fails.", positive
    )
    backoff_initial_s: float = setting(1.0, "First wait to restart a crashed worker.", non_negative)
    backoff_max_s: float = setting(30.0, "Cap of the exponential restart backoff.", positive)
    park_retry_s: float = setting(
        300.0, "A worker that cannot start (bad model) is parked, retried this rarely.", positive
    )


@dataclass(frozen=True)
class Service:
    """[service] processes, files, supervisord."""

    run_dir: str = setting(
        "run",
        "Directory for the supervisord socket, pid file, rendered config and secret.",
    )
    log_dir: str = setting(
        "logs",
        "Directory for logs (rotated by supervisord).",
    )
    log_max_mb: int = setting(
        20,
        "Size at which a log file rotates.",
        positive,
    )
    log_backups: int = setting(
        5,
        "Rotated log files kept.",
        non_negative,
    )
    graceful_timeout_s: int = setting(
        10,
        "How long `down` or Ctrl-C waits for processes to stop before killing them.",
        positive,
    )
    watchdog_down_limit_s: int = setting(
        600,
        "How long the watchdog may be down (FATAL, restarted by `up` with backoff) before "
        "`up` stops the whole service and exits 69 so the service manager restarts it; "
        "0 never does. Without a watchdog the service answers, but no worker is restarted.",
        non_negative,
    )


@dataclass(frozen=True)
class Faults:
    """[faults] test-only fault injection on the worker's loopback port."""

    enabled: bool = setting(
        False,
        "Serve POST /_fault on each worker's loopback port (tests only).",
    )


SECTIONS: dict[str, type] = {
    "gateway": Gateway,
    "primary": Primary,
    "fallback": Fallback,
    "watchdog": Watchdog,
    "service": Service,
    "faults": Faults,
}


@dataclass(frozen=True)
class Settings:
    """Every resolved value, one typed object a section: `settings.gateway.port` is an int."""

    gateway: Gateway
    primary: Primary
    fallback: Fallback
    watchdog: Watchdog
    service: Service
    faults: Faults
    # Where each value came from ("default", a file path, "environment VAR", "command line").
    sources: Mapping[str, str]

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str]) -> Settings:
        sections = {
            name: section_cls(
                **{k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(name + ".")}
            )
            for name, section_cls in SECTIONS.items()
        }
        return cls(**sections, sources=dict(sources))

    def value(self, name: str) -> Any:
        """A value by its dotted name, for code that walks every setting (env, docs)."""
        section, key = name.split(".", 1)
        return getattr(getattr(self, section), key)

    def as_dict(self) -> dict[str, Any]:
        """Every value by its dotted name, in declaration order."""
        return {
            f"{name}.{f.name}": getattr(getattr(self, name), f.name)
            for name in SECTIONS
            for f in dataclasses.fields(SECTIONS[name])
        }

    def as_env(self) -> dict[str, str]:
        """Every setting as SENTIGUARD_* variables, so child processes resolve the same values."""
        return {env_name(*n.split(".", 1)): _to_text(v) for n, v in self.as_dict().items()}


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)

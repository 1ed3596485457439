"""Every setting sentiguard has, declared once.

Each `Setting` carries its section, key, type, default, help text and an optional
validator. Values are resolved with this precedence, lowest first:

    defaults < TOML file (--config or SENTIGUARD_CONFIG) < SENTIGUARD_<SECTION>_<KEY> < CLI flags

An unknown key, a wrong type or a value the validator rejects raises `SettingsError`
naming the key and the fix, so a bad config stops the start instead of half-working.
`conf/sentiguard.toml` documents every setting; a test keeps the two in step.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentiguard.errors import SettingsError

ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "SENTIGUARD_"
CONFIG_ENV = "SENTIGUARD_CONFIG"

Validator = Callable[[Any], str | None]


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def port(value: Any) -> str | None:
    return None if 1 <= value <= 65535 else "must be a TCP port between 1 and 65535"


def one_of(*choices: str) -> Validator:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    type: type
    default: Any
    help: str
    validator: Validator | None = None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"

    def coerce(self, raw: Any, source: str) -> Any:
        """Turn a TOML or environment value into this setting's type, or fail with a hint."""
        value = raw
        if isinstance(raw, str) and self.type is not str:
            value = _parse_text(raw, self.type)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (
            value is None
            or not isinstance(value, self.type)
            or (self.type is int and isinstance(value, bool))
        ):
            raise SettingsError(
                f"{self.name} = {raw!r} (from {source}) is not a {self.type.__name__}. "
                f"Hint: set it to a {self.type.__name__} like {self.default!r}, or remove it "
                f"to use the default."
            )
        if self.validator is not None:
            problem = self.validator(value)
            if problem:
                raise SettingsError(
                    f"{self.name} = {value!r} (from {source}) {problem}. "
                    f"Hint: the default is {self.default!r}."
                )
        return value


def _parse_text(raw: str, kind: type) -> Any:
    text = raw.strip()
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return None
    try:
        return kind(text)
    except ValueError:
        return None


S = Setting
SETTINGS: tuple[Setting, ...] = (
    # --- gateway: the public HTTP API and web UI -----------------------------------
    S(
        "gateway",
        "host",
        str,
        "127.0.0.1",
        "Address the gateway binds. Anything beyond loopback needs gateway.api_key "
        "(or gateway.allow_public_without_key for networks already private).",
    ),
    S("gateway", "port", int, 5000, "Public HTTP port of the gateway.", port),
    S(
        "gateway",
        "threads",
        int,
        96,
        "Request threads of the gateway's WSGI server. Must exceed the primary and "
        "fallback capacities together so shedding, not queueing, handles overload.",
        positive,
    ),
    S(
        "gateway",
        "deadline_ms",
        int,
        1500,
        "Longest a request waits for a primary worker before the fallback answers it. "
        "Clients may ask for less with X-Deadline-Ms.",
        positive,
    ),
    S(
        "gateway",
        "max_in_flight_per_worker",
        int,
        8,
        "Requests sent to one primary worker at once; more go to another worker or, "
        "when none has room, to the fallback (reason 'overloaded').",
        positive,
    ),
    S(
        "gateway",
        "fallback_capacity",
        int,
        64,
        "Requests the in-process fallback answers at once; beyond it the gateway "
        "answers 503 with Retry-After.",
        positive,
    ),
    S(
        "gateway",
        "retry_after_s",
        int,
        1,
        "Retry-After value on a 503 when load is shed.",
        positive,
    ),
    S(
        "gateway",
        "max_texts",
        int,
        256,
        'Most texts in one POST /analyze {"texts": [...]}.',
        positive,
    ),
    S("gateway", "max_text_chars", int, 5000, "Longest single text, in characters.", positive),
    S("gateway", "max_body_bytes", int, 2_000_000, "Largest request body, in bytes.", positive),
    S(
        "gateway",
        "max_json_depth",
        int,
        8,
        "Deepest JSON nesting a request body may have.",
        positive,
    ),
    S(
        "gateway",
        "breaker_open_s",
        float,
        2.0,
        "How long a worker's breaker stays open before a half-open probe request.",
        positive,
    ),
    S(
        "gateway",
        "log_text",
        bool,
        False,
        "Put the review text into the access log (off: only its length).",
    ),
    S(
        "gateway",
        "api_key",
        str,
        "",
        "API key clients send as 'Authorization: Bearer KEY' or 'X-API-Key'. Required "
        "when gateway.host is not loopback.",
    ),
    S(
        "gateway",
        "allow_public_without_key",
        bool,
        False,
        "Allow binding beyond loopback without an API key, for networks already private.",
    ),
    # --- primary: the StructBERT workers --------------------------------------------
    S(
        "primary",
        "model",
        str,
        "models/primary",
        "Model directory (relative to the project) or ModelScope hub id, e.g. "
        "damo/nlp_structbert_sentiment-classification_chinese-base.",
    ),
    S(
        "primary",
        "backend",
        str,
        "modelscope",
        "How the worker loads the model: modelscope (pipeline) or transformers.",
        one_of("modelscope", "transformers"),
    ),
    S("primary", "workers", int, 2, "Number of primary worker processes.", positive),
    S(
        "primary",
        "base_port",
        int,
        5101,
        "Loopback port of worker 0; worker i listens on base_port + i.",
        port,
    ),
    S(
        "primary",
        "sequence_length",
        int,
        128,
        "Longest input, in tokens, one forward pass sees.",
        positive,
    ),
    S(
        "primary",
        "long_text",
        str,
        "truncate",
        "Texts longer than sequence_length: truncate (keep the start) or window "
        "(half-overlapping windows whose probabilities are averaged, twice the cost for "
        "long texts). On the embedded model truncate scored 0.8318 on the held-out split, "
        "window 0.8312 (258 vs 257 of its 288 long reviews, `python bench/primary.py "
        "--long-text`); measure again for another model.",
        one_of("truncate", "window"),
    ),
    S(
        "primary",
        "max_batch_size",
        int,
        32,
        "Most texts coalesced into one forward pass.",
        positive,
    ),
    S(
        "primary",
        "max_batch_wait_ms",
        float,
        4.0,
        "How long the batcher waits for more requests before running a batch.",
        non_negative,
    ),
    S(
        "primary",
        "batch_lanes",
        int,
        0,
        "Batches a worker runs at once, each on its own thread with torch_threads "
        "threads; 0: the worker's share of the CPUs this process may run on (CPUs // "
        "primary.workers, at least 1). Set it under a container CPU quota, which the CPU "
        "count does not show.",
        non_negative,
    ),
    S(
        "primary",
        "torch_threads",
        int,
        1,
        "torch intra-op threads per batch lane. One: two lanes of one thread outran one "
        "lane of two on two cores (primary/batcher.py).",
        positive,
    ),
    S("primary", "server_threads", int, 32, "HTTP threads of each worker.", positive),
    S(
        "primary",
        "nice",
        int,
        5,
        "CPU niceness a worker gives itself at start (0-19). Inference is batch work; the "
        "gateway's routing and fallback answers are the latency-critical path, so on "
        "shared cores the workers yield to it.",
        lambda v: None if 0 <= v <= 19 else "must be between 0 and 19",
    ),
    # --- fallback: jieba + scikit-learn, in the gateway ------------------------------
    S(
        "fallback",
        "model",
        str,
        "models/fallback",
        "Directory of the fallback classifier (made by `sentiguard train fallback`).",
    ),
    # --- watchdog -------------------------------------------------------------------
    S("watchdog", "interval_s", float, 1.0, "Seconds between two rounds of checks.", positive),
    S(
        "watchdog",
        "memory_limit_mb",
        int,
        1200,
        "A worker whose process tree uses more (USS, else RSS) for memory_samples "
        "consecutive samples is recycled.",
        positive,
    ),
    S(
        "watchdog",
        "memory_critical_mb",
        int,
        2000,
        "Above this a worker is recycled even when it is the last one ready.",
        positive,
    ),
    S(
        "watchdog",
        "memory_samples",
        int,
        3,
        "Consecutive samples over the limit before a recycle.",
        positive,
    ),
    S(
        "watchdog",
        "probe_timeout_ms",
        int,
        1000,
        "A /health probe slower than this has failed.",
        positive,
    ),
    S(
        "watchdog",
        "probe_budget_ms",
        int,
        500,
        "Latency budget of the known-answer probe; slower counts as a miss.",
        positive,
    ),
    S("watchdog", "probe_failures", int, 3, "Failed probes in a row that mean 'hung'.", positive),
    S(
        "watchdog",
        "drain_timeout_s",
        float,
        3.0,
        "How long a drained worker may finish in-flight requests before it is stopped.",
        non_negative,
    ),
    S(
        "watchdog",
        "start_timeout_s",
        float,
        60.0,
        "How long a restarted worker may take to become ready before it counts as failed.",
        positive,
    ),
    S(
        "watchdog",
        "backoff_initial_s",
        float,
        1.0,
        "First wait before restarting a crashed worker.",
        non_negative,
    ),
    S(
        "watchdog",
        "backoff_max_s",
        float,
        30.0,
        "Cap of the exponential restart backoff.",
        positive,
    ),
    S(
        "watchdog",
        "park_retry_s",
        float,
        300.0,
        "A worker that cannot start (bad model) is parked and retried this rarely.",
        positive,
    ),
    # --- service: processes, files, supervisord -----------------------------------
    S(
        "service",
        "run_dir",
        str,
        "run",
        "Directory for the supervisord socket, pid file, rendered config and secret.",
    ),
    S("service", "log_dir", str, "logs", "Directory for logs (rotated by supervisord)."),
    S("service", "log_max_mb", int, 20, "Size at which a log file rotates.", positive),
    S("service", "log_backups", int, 5, "Rotated log files kept.", non_negative),
    S(
        "service",
        "graceful_timeout_s",
        int,
        10,
        "How long `down` or Ctrl-C waits for processes to stop before killing them.",
        positive,
    ),
    # --- faults: test-only fault injection on the worker's loopback port ------------
    S(
        "faults",
        "enabled",
        bool,
        False,
        "Serve POST /_fault on each worker's loopback port (tests only).",
    ),
)
del S

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS))


@dataclass
class Settings:
    """Resolved settings: `settings.get("gateway.port")` or `settings.gateway["port"]`."""

    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.values[name]

    def section(self, section: str) -> dict[str, Any]:
        prefix = section + "."
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}

    def __getattr__(self, section: str) -> dict[str, Any]:
        if section in SECTIONS:
            return self.section(section)
        raise AttributeError(section)

    def path(self, name: str) -> Path:
        """A path setting, relative paths taken from the project root."""
        value = Path(self.values[name])
        return value if value.is_absolute() else ROOT / value

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        return load(None, overrides=overrides, base=self)

    def as_env(self) -> dict[str, str]:
        """Every setting as SENTIGUARD_* variables, so child processes resolve the same values."""
        return {BY_NAME[n].env: _to_text(v) for n, v in self.values.items()}


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise SettingsError(
            f"config file {path} does not exist. Hint: pass an existing file with --config "
            f"or {CONFIG_ENV}, or copy conf/sentiguard.toml."
        ) from e
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(
            f"config file {path} is not valid TOML: {e}. Hint: fix that line."
        ) from e


def _flatten(doc: Mapping[str, Any], source: str) -> Iterable[tuple[str, Any]]:
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise SettingsError(
                f"{source}: top-level key {section!r} is not a [section]. "
                f"Hint: sections are {', '.join(SECTIONS)}."
            )
        for key, value in table.items():
            yield f"{section}.{key}", value


def _unknown(name: str, source: str) -> SettingsError:
    import difflib

    close = difflib.get_close_matches(name, BY_NAME, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}?" if close else "see conf/sentiguard.toml for every setting."
    return SettingsError(f"unknown setting {name!r} in {source}. Hint: {hint}")


def load(
    config: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Resolve every setting: defaults < TOML < environment < overrides (CLI flags)."""
    environ = os.environ if environ is None else environ
    if base is not None:
        values, sources = dict(base.values), dict(base.sources)
    else:
        values = {s.name: s.default for s in SETTINGS}
        sources = {s.name: "default" for s in SETTINGS}
        config = config or environ.get(CONFIG_ENV) or None
        if config:
            path = Path(config)
            for name, raw in _flatten(_read_toml(path), str(path)):
                if name not in BY_NAME:
                    raise _unknown(name, str(path))
                values[name] = BY_NAME[name].coerce(raw, str(path))
                sources[name] = str(path)
        known_env = {s.env: s for s in SETTINGS}
        for var, raw in environ.items():
            if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
                continue
            setting = known_env.get(var)
            if setting is None:
                raise SettingsError(
                    f"unknown environment variable {var}. Hint: variables are "
                    f"SENTIGUARD_<SECTION>_<KEY>, e.g. SENTIGUARD_WATCHDOG_MEMORY_LIMIT_MB; "
                    f"unset it or fix its name."
                )
            values[setting.name] = setting.coerce(raw, f"environment {var}")
            sources[setting.name] = f"environment {var}"
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in BY_NAME:
            raise _unknown(name, "command line")
        values[name] = BY_NAME[name].coerce(raw, "command line")
        sources[name] = "command line"
    return Settings(values, sources)


def render_toml() -> str:
    """conf/sentiguard.toml: every setting with its default and help, generated from SETTINGS."""
    lines = [
        "# sentiguard settings: every knob, with its default. Generated from",
        "# sentiguard/settings.py by `python -m sentiguard.settings > conf/sentiguard.toml`;",
        "# a test fails when the two differ.",
        "#",
        "# Precedence, lowest first: these defaults < this file (--config or SENTIGUARD_CONFIG)",
        "# < environment SENTIGUARD_<SECTION>_<KEY> < command-line flags.",
    ]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for s in (s for s in SETTINGS if s.section == section):
            lines += [f"# {line}" for line in _wrap(s.help)]
            lines.append(f"# env {s.env}")
            lines.append(f"{s.key} = {_toml_value(s.default)}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 88) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width - 2)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


if __name__ == "__main__":
    print(render_toml(), end="")

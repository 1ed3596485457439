"""Prometheus metrics of one gateway app, in its own `CollectorRegistry`.

Counted as requests happen:

- `sentiguard_requests_total{model, reason}`   answered /analyze requests (reason "none"
  when the primary answered)
- `sentiguard_texts_total{model}`              texts in those requests
- `sentiguard_shed_total`                      503s: the fallback was full
- `sentiguard_rejected_total{code}`            4xx answers by error code
- `sentiguard_request_latency_seconds{model}`  histogram of /analyze latency

Read from the held state at scrape time (`StateCollector`):

- `sentiguard_worker_ready{worker}`, `sentiguard_worker_in_flight{worker}`,
  `sentiguard_worker_capacity{worker}` (its learnt concurrency limit, summed over processes),
  `sentiguard_worker_breaker_open{worker}`, `sentiguard_worker_draining{worker}`
- `sentiguard_worker_rss_bytes{worker}`, `sentiguard_worker_uss_bytes{worker}`
- `sentiguard_worker_restarts_total{worker, cause}` (counted by the watchdog)
- `sentiguard_fallback_in_use`, `sentiguard_fallback_capacity`, `sentiguard_watchdog_stale`
- `sentiguard_program_running{program}`, `sentiguard_program_crash_loop{program}`,
  `sentiguard_program_starts_recent{program}`, `sentiguard_program_restarts_by_up{program}`:
  the gateway processes and the watchdog as `up` keeps them (`runtime.escalation`)

With several gateway processes every scrape answers for the whole service, whichever
process takes it. The counters and the histogram use prometheus_client's multiprocess mode:
`sentiguard up` hands the gateway processes `PROMETHEUS_MULTIPROC_DIR` (`<run_dir>/metrics`,
emptied at each `up`), each process writes its values to its own files there, and a scrape
sums every file, those of processes that died or restarted included, so a counter never
goes back. The state gauges come from the merged /status body (`GatewayState.status`):
in-flight and fallback counts summed over the processes, the rest as this process sees it.
Without that variable (tests, a gateway run alone) everything is this process's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from sentiguard.gateway.state import GatewayState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """Where every gateway process's counters are, when there are several (else None).

    prometheus_client decides at import whether values live in files there; the variable
    comes from the process's environment, set by `sentiguard up`.
    """
    return os.environ.get(MULTIPROC_ENV) or None


class StateCollector(Collector):
    def __init__(self, state: GatewayState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        gauges = {
            name: GaugeMetricFamily(f"sentiguard_worker_{name}", text, labels=["worker"])
            for name, text in (
                ("ready", "1 when the worker passed /ready and is not drained"),
                ("in_flight", "requests the gateway has outstanding on the worker"),
                ("capacity", "requests the gateway may send the worker at once (learnt limit)"),
                ("breaker_open", "1 while the worker's breaker is open or half-open"),
                ("draining", "1 while the watchdog drains the worker"),
                ("rss_bytes", "resident memory of the worker"),
                ("uss_bytes", "unique memory of the worker (USS)"),
            )
        }
        restarts = CounterMetricFamily(
            "sentiguard_worker_restarts", "worker restarts by cause", labels=["worker", "cause"]
        )
        status = self.state.status()  # the whole service's, with the siblings' counts
        for w in status["workers"]:
            name = w["name"]
            gauges["ready"].add_metric([name], 1.0 if w["ready"] and not w["drain"] else 0.0)
            gauges["in_flight"].add_metric([name], w["in_flight"])
            gauges["capacity"].add_metric([name], w["capacity"])
            gauges["breaker_open"].add_metric([name], 0.0 if w["breaker"] == "closed" else 1.0)
            gauges["draining"].add_metric([name], 1.0 if w["drain"] else 0.0)
            for key in ("rss", "uss"):
                if w[f"{key}_mb"] is not None:
                    gauges[f"{key}_bytes"].add_metric([name], w[f"{key}_mb"] * 2**20)
            for cause, n in w["restarts"].items():
                restarts.add_metric([name, cause], n)
        yield from gauges.values()
        yield restarts
        yield from _program_metrics(status.get("programs"))
        fallback = status["fallback"]
        yield GaugeMetricFamily(
            "sentiguard_fallback_in_use", "requests the fallback answers now", fallback["in_use"]
        )
        yield GaugeMetricFamily(
            "sentiguard_fallback_capacity", "fallback requests at once", fallback["capacity"]
        )
        stale = status["watchdog"]["stale"]
        yield GaugeMetricFamily(
            "sentiguard_watchdog_stale",
            "1 when the watchdog has not reported for 10 s",
            1.0 if stale else 0.0,
        )


class Metrics:
    def __init__(self, state: GatewayState) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sentiguard_requests",
            "answered /analyze requests by model and reason",
            ["model", "reason"],
            registry=self.registry,
        )
        self.texts = Counter(
            "sentiguard_texts", "texts answered by model", ["model"], registry=self.registry
        )
        self.shed = Counter(
            "sentiguard_shed",
            "requests shed with 503: the fallback was full",
            registry=self.registry,
        )
        self.rejected = Counter(
            "sentiguard_rejected", "4xx answers by error code", ["code"], registry=self.registry
        )
        self.latency = Histogram(
            "sentiguard_request_latency_seconds",
            "latency of /analyze answers by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.state_collector = StateCollector(state)
        self.registry.register(self.state_collector)
        self.shared_dir = multiprocess_dir()

    def answered(self, model: str, reason: str | None, n_texts: int, latency_s: float) -> None:
        self.requests.labels(model=model, reason=reason or "none").inc()
        self.texts.labels(model=model).inc(n_texts)
        self.latency.labels(model=model).observe(latency_s)

    def _families(self, name: str, own: Counter) -> Iterable[Metric]:
        """A counter's families: every gateway process's (summed) when shared, else ours."""
        if self.shared_dir is None:
            return own.collect()
        every = MultiProcessCollector(None, path=self.shared_dir).collect()
        return [f for f in every if f.name == name]

    def answered_counts(self) -> dict[tuple[str, str], float]:
        """Answered requests so far by (model, reason): the counter /metrics shows, read
        back for the operations page's history rather than counted a second time."""
        counts: dict[tuple[str, str], float] = {}
        for family in self._families("sentiguard_requests", self.requests):
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = (s.labels["model"], s.labels["reason"])
                    counts[key] = counts.get(key, 0.0) + s.value
        return counts

    def shed_count(self) -> float:
        """Requests shed so far (`sentiguard_shed_total`)."""
        return sum(
            s.value
            for family in self._families("sentiguard_shed", self.shed)
            for s in family.samples
            if s.name.endswith("_total")
        )

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.shared_dir)
        registry.register(self.state_collector)
        return generate_latest(registry)


def _program_metrics(report: dict[str, Any] | None) -> Iterator[Metric]:
    """The gateway processes and the watchdog as `up` keeps them (`runtime.escalation`)."""
    families = {
        key: GaugeMetricFamily(f"sentiguard_program_{key}", text, labels=["program"])
        for key, text in (
            ("running", "1 while supervisord reports the program RUNNING"),
            ("crash_loop", "1 while the program restarted 5 times within 60 s"),
            ("starts_recent", "starts of the program within the last 60 s"),
            ("restarts_by_up", "times `up` started the program again after it went FATAL"),
        )
    }
    if report is not None and not report.get("stale"):
        for p in report.get("programs", []):
            name = str(p.get("name"))
            families["running"].add_metric([name], 1.0 if p.get("state") == "RUNNING" else 0.0)
            families["crash_loop"].add_metric([name], 1.0 if p.get("crash_loop") else 0.0)
            families["starts_recent"].add_metric([name], float(p.get("starts_in_window") or 0))
            families["restarts_by_up"].add_metric([name], float(p.get("restarts_by_up") or 0))
    yield from families.values()

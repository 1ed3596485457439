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
  `sentiguard_worker_breaker_open{worker}`, `sentiguard_worker_draining{worker}`
- `sentiguard_worker_rss_bytes{worker}`, `sentiguard_worker_uss_bytes{worker}`
- `sentiguard_worker_restarts_total{worker, cause}` (counted by the watchdog)
- `sentiguard_fallback_in_use`, `sentiguard_fallback_capacity`, `sentiguard_watchdog_stale`
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sentiguard.gateway.state import GatewayState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0)


class StateCollector(Collector):
    def __init__(self, state: GatewayState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        gauges = {
            name: GaugeMetricFamily(f"sentiguard_worker_{name}", text, labels=["worker"])
            for name, text in (
                ("ready", "1 when the worker passed /ready and is not drained"),
                ("in_flight", "requests the gateway has outstanding on the worker"),
                ("breaker_open", "1 while the worker's breaker is open or half-open"),
                ("draining", "1 while the watchdog drains the worker"),
                ("rss_bytes", "resident memory of the worker"),
                ("uss_bytes", "unique memory of the worker (USS)"),
            )
        }
        restarts = CounterMetricFamily(
            "sentiguard_worker_restarts", "worker restarts by cause", labels=["worker", "cause"]
        )
        for w in self.state.pool.snapshot():
            name = w["name"]
            gauges["ready"].add_metric([name], 1.0 if w["ready"] and not w["drain"] else 0.0)
            gauges["in_flight"].add_metric([name], w["in_flight"])
            gauges["breaker_open"].add_metric([name], 0.0 if w["breaker"] == "closed" else 1.0)
            gauges["draining"].add_metric([name], 1.0 if w["drain"] else 0.0)
            for key in ("rss", "uss"):
                if w[f"{key}_mb"] is not None:
                    gauges[f"{key}_bytes"].add_metric([name], w[f"{key}_mb"] * 2**20)
            for cause, n in w["restarts"].items():
                restarts.add_metric([name, cause], n)
        yield from gauges.values()
        yield restarts
        admission = self.state.admission
        yield GaugeMetricFamily(
            "sentiguard_fallback_in_use", "requests the fallback answers now", admission.in_use
        )
        yield GaugeMetricFamily(
            "sentiguard_fallback_capacity", "fallback requests at once", admission.capacity
        )
        stale = self.state.watchdog.view()["stale"]
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
        self.registry.register(StateCollector(state))

    def answered(self, model: str, reason: str | None, n_texts: int, latency_s: float) -> None:
        self.requests.labels(model=model, reason=reason or "none").inc()
        self.texts.labels(model=model).inc(n_texts)
        self.latency.labels(model=model).observe(latency_s)

    def answered_counts(self) -> dict[tuple[str, str], float]:
        """Answered requests so far by (model, reason): the counter /metrics shows, read
        back for the operations page's history rather than counted a second time."""
        return {
            (s.labels["model"], s.labels["reason"]): s.value
            for family in self.requests.collect()
            for s in family.samples
            if s.name.endswith("_total")
        }

    def shed_count(self) -> float:
        """Requests shed so far (`sentiguard_shed_total`)."""
        return sum(
            s.value
            for family in self.shed.collect()
            for s in family.samples
            if s.name.endswith("_total")
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Chaos scenarios about capacity, not faults: does the primary hold its rate under load?

- `hold`: the same service under `low` then `high` closed-loop clients. The primary's
  answers/s at `high` against `low` (a worker mistaken for hung, or a limit that admits
  more than the model can batch, shows as a lower rate), the watchdog's restarts by cause
  during the run, and the client p99 against the gateway's deadline.
- `deadline_abuse`: `normal` clients alone, then beside `abusive` clients that each ask
  for a `deadline_ms` deadline the primary can rarely meet. The normal clients' primary
  share in both phases and the breakers after: a client-shortened deadline must not count
  as the worker's failure.
"""

from __future__ import annotations

import time
from collections import Counter

from sentiguard.chaos.load import Load, Sample
from sentiguard.chaos.service import ServiceHandle
from sentiguard.chaos.timeline import Result
from sentiguard.validation import DEADLINE_HEADER


def restarts(service: ServiceHandle) -> Counter[str]:
    """Restarts by cause, summed over the workers, as /status reports them."""
    total: Counter[str] = Counter()
    for worker in service.status()["workers"]:
        total.update(worker.get("restarts") or {})
    return total


def primary_per_s(samples: list[Sample], duration_s: float) -> float:
    return sum(1 for s in samples if s.status == 200 and s.model == "primary") / duration_s


def primary_share(samples: list[Sample]) -> float | None:
    answered = [s for s in samples if s.status == 200]
    if not answered:
        return None
    return sum(1 for s in answered if s.model == "primary") / len(answered)


def _phase(service: ServiceHandle, clients: int, seconds: float) -> tuple[list[Sample], float]:
    start = time.monotonic()
    with Load(service.port, clients) as load:
        time.sleep(seconds)  # the measuring window itself
    return load.snapshot(), time.monotonic() - start


def hold(service: ServiceHandle, low: int = 4, high: int = 16, seconds: float = 40.0) -> Result:
    """`low` clients for `seconds` / 2, then `high` clients for `seconds`."""
    before = restarts(service)
    low_samples, low_s = _phase(service, low, max(10.0, seconds / 2))
    start = time.monotonic()
    samples, high_s = _phase(service, high, seconds)
    result = Result(f"hold{high}", time.monotonic() - start, samples)
    low_rate, high_rate = primary_per_s(low_samples, low_s), primary_per_s(samples, high_s)
    during = restarts(service) - before
    deadline_ms = service.settings.gateway.deadline_ms
    result.extra.update(
        clients=high,
        primary_per_s=round(high_rate, 2),
        **{f"primary_per_s_at_{low}": round(low_rate, 2)},
        primary_ratio=round(high_rate / low_rate, 3) if low_rate else None,
        restarts_during=dict(during),
        failed=len(result.failures),
        deadline_ms=deadline_ms,
        p99_over_deadline_ms=round(result.latency_quantile(0.99) * 1000 - deadline_ms, 1),
        capacity={w["name"]: w.get("capacity") for w in service.status()["workers"]},
    )
    return result


def deadline_abuse(
    service: ServiceHandle,
    normal: int = 2,
    abusive: int = 4,
    deadline_ms: int = 60,
    seconds: float = 20.0,
) -> Result:
    """The normal clients' primary share alone, then with `abusive` short-deadline clients."""
    alone, _ = _phase(service, normal, seconds)
    start = time.monotonic()
    header = {DEADLINE_HEADER: str(deadline_ms)}
    normal_load, bad = Load(service.port, normal), Load(service.port, abusive, headers=header)
    with normal_load, bad:
        time.sleep(seconds)  # the measuring window itself
    beside = normal_load.snapshot()
    result = Result("deadline_abuse", time.monotonic() - start, beside)
    abused = bad.snapshot()
    share_alone, share_beside = primary_share(alone), primary_share(beside)
    workers = service.status()["workers"]
    result.extra.update(
        normal_primary_share_alone=share_alone and round(share_alone, 3),
        normal_primary_share_beside=share_beside and round(share_beside, 3),
        share_ratio=round(share_beside / share_alone, 3) if share_alone and share_beside else None,
        abusive_statuses=dict(Counter(s.status for s in abused)),
        abusive_answers=dict(Counter(f"{s.model}/{s.reason}" for s in abused if s.status == 200)),
        breakers_after={w["name"]: w["breaker"] for w in workers},
    )
    return result

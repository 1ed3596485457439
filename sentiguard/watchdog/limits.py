"""How much memory a worker may use: the configured numbers, or derived from its own peak.

`watchdog.memory_limit_mb = "auto"` (the default) makes the limit follow the model: each
worker measures itself at start, before it is ready (`peak_mb`: its memory while its
largest batch at the longest sequence runs on every lane at once, reported on GET /live;
primary/footprint.py), and its limit is that peak plus a margin,
`max(AUTO_MARGIN_MIN_MB, AUTO_MARGIN_SHARE x peak)`:

- 150 MB at least: on the embedded model (measured: ready ~360 MB USS, ~410 MB after a
  full batch) a serving worker stays under its peak, but glibc's per-thread arenas (one
  per HTTP thread) and the tokenizer's caches grow by tens of MB over hours of traffic,
  and the limit must not recycle a healthy worker for that;
- 25 % of the peak on a big model, whose activations and arena growth scale with it
  (base-size: a ~1 GB peak gets ~250 MB), while a leak of a few hundred MB is still
  caught long before the host runs short.

`memory_critical_mb = "auto"` is 1.5 x the worker's limit. A number overrides either.
Until a worker has reported its peak there is no limit to hold it to, so only the
critical level applies: the configured one, else `UNMEASURED_CRITICAL_MB`, a sanity cap
above any model this service ships (base-size peaks near 1.1 GB) that still stops a
runaway worker before it takes the host.

No I/O here: the policy, the reports and `sentiguard doctor` share these rules.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO = "auto"
AUTO_MARGIN_MIN_MB = 150.0
AUTO_MARGIN_SHARE = 0.25
AUTO_CRITICAL_FACTOR = 1.5
UNMEASURED_CRITICAL_MB = 4096.0


@dataclass(frozen=True)
class MemoryProfile:
    """What a worker measured of itself at start (GET /live `memory`); figures in MB."""

    ready_mb: float
    peak_mb: float
    batch: int
    tokens: int


@dataclass(frozen=True)
class MemoryLimits:
    """One worker's limits. `limit_mb` is None while an auto limit waits for a measure."""

    limit_mb: float | None
    critical_mb: float
    source: str  # one line for /status: how the limit was derived


def auto_margin_mb(peak_mb: float) -> float:
    return max(AUTO_MARGIN_MIN_MB, AUTO_MARGIN_SHARE * peak_mb)


def auto_limit_mb(peak_mb: float) -> float:
    return round(peak_mb + auto_margin_mb(peak_mb))


def derive(limit: int | str, critical: int | str, profile: MemoryProfile | None) -> MemoryLimits:
    """The limits of one worker from the two settings and its measure (None: not yet)."""
    if isinstance(limit, int):
        limit_mb: float | None = float(limit)
        source = "watchdog.memory_limit_mb"
    elif profile is not None:
        limit_mb = auto_limit_mb(profile.peak_mb)
        source = (
            f"auto: peak {profile.peak_mb:.0f} MB after {profile.batch} texts x "
            f"{profile.tokens} tokens + {auto_margin_mb(profile.peak_mb):.0f} MB margin"
        )
    else:
        limit_mb = None
        source = "auto: waiting for the worker's measure (GET /live); critical level only"
    if isinstance(critical, int):
        critical_mb = float(critical)
    elif limit_mb is not None:
        critical_mb = round(AUTO_CRITICAL_FACTOR * limit_mb)
    else:
        critical_mb = UNMEASURED_CRITICAL_MB
    return MemoryLimits(limit_mb, critical_mb, source)

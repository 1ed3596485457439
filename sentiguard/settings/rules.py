"""How the settings fit together: the rules no single setting's validator can see.

`problems(settings)` lists every broken rule as a `Problem` (a failure or a warning) with
its fix. `load` refuses the failures with exactly the message `sentiguard doctor` prints
for them, so `sentiguard up` never starts a configuration doctor calls broken; warnings
still start.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sentiguard.errors import SettingsError
from sentiguard.runtime.net import is_loopback
from sentiguard.settings.schema import Gateway, Settings, env_name


class Level(StrEnum):
    FAIL = "fail"
    WARN = "warn"


@dataclass(frozen=True)
class Problem:
    level: Level
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.message}. Hint: {self.fix}."


def problems(settings: Settings) -> list[Problem]:
    """Every cross-setting rule this configuration breaks, failures and warnings."""
    gateway, primary, watchdog = settings.gateway, settings.primary, settings.watchdog
    found: list[Problem] = []

    def fail(message: str, fix: str) -> None:
        found.append(Problem(Level.FAIL, message, fix))

    def warn(message: str, fix: str) -> None:
        found.append(Problem(Level.WARN, message, fix))

    base, workers = primary.base_port, primary.workers
    if base <= gateway.port < base + workers:
        fail(
            f"gateway.port {gateway.port} is one of the worker ports {base}..{base + workers - 1}",
            "set gateway.port or primary.base_port so the ranges do not overlap",
        )
    if base + workers - 1 > 65535:
        fail(
            f"worker ports run past 65535 ({base} + {workers} workers)",
            "lower primary.base_port",
        )
    capacity = workers * gateway.max_in_flight_per_worker + gateway.fallback_capacity
    if gateway.threads <= capacity:
        fail(
            f"gateway.threads {gateway.threads} <= primary + fallback capacity {capacity}: "
            f"overload would queue instead of being shed",
            f"set gateway.threads above {capacity}",
        )
    if gateway.min_deadline_ms > gateway.deadline_ms:
        fail(
            f"gateway.min_deadline_ms {gateway.min_deadline_ms} is above gateway.deadline_ms "
            f"{gateway.deadline_ms}: every X-Deadline-Ms would be refused",
            "set min_deadline_ms at or below deadline_ms",
        )
    if gateway.processes > gateway.max_in_flight_per_worker:
        warn(
            f"gateway.processes {gateway.processes} > gateway.max_in_flight_per_worker "
            f"{gateway.max_in_flight_per_worker}: every gateway process sends a worker at "
            f"least one request, so a worker may get {gateway.processes} at once",
            "raise max_in_flight_per_worker to at least gateway.processes, or run fewer "
            "gateway processes",
        )
    limit, critical = watchdog.memory_limit_mb, watchdog.memory_critical_mb
    if isinstance(limit, int) and isinstance(critical, int) and critical <= limit:
        fail(
            "watchdog.memory_critical_mb is not above watchdog.memory_limit_mb",
            "set memory_critical_mb higher than memory_limit_mb",
        )
    # probe_budget_ms may exceed probe_timeout_ms: the known-answer check waits up to two
    # budgets (watchdog/policy.py), and probe_timeout_ms bounds only GET /live.
    hang_floor_ms = watchdog.progress_floor_s * 1000
    if hang_floor_ms < watchdog.probe_timeout_ms * watchdog.probe_failures:
        warn(
            f"watchdog.progress_floor_s {watchdog.progress_floor_s:g} is shorter than "
            f"probe_failures x probe_timeout_ms: a worker without a measured batch may be "
            f"called hung before one /live miss would count",
            "raise progress_floor_s to at least probe_failures x probe_timeout_ms / 1000",
        )
    public = public_bind_problem(gateway)
    if public is not None:
        found.append(public)
    if settings.faults.enabled:
        warn(
            "faults.enabled: workers accept fault injection (tests only)",
            "unset SENTIGUARD_FAULTS_ENABLED / faults.enabled in production",
        )
    return found


def public_bind_problem(gateway: Gateway) -> Problem | None:
    """A bind beyond loopback needs an API key, unless the network is declared private."""
    if is_loopback(gateway.host) or gateway.api_key or gateway.allow_public_without_key:
        return None
    return Problem(
        Level.FAIL,
        f"gateway.host {gateway.host} is reachable beyond this machine and no API key is set: "
        f"the gateway would refuse to start",
        f"export {env_name('gateway', 'api_key')}=$(openssl rand -hex 32) (or api_key in "
        f"[gateway] of the config) and give it to clients as 'Authorization: Bearer KEY'; "
        f"on a network already private set gateway.allow_public_without_key = true; to "
        f"stay local set gateway.host = 127.0.0.1",
    )


def refuse_failures(settings: Settings) -> None:
    """Raise `SettingsError` with the first failing rule, as doctor words it."""
    for problem in problems(settings):
        if problem.level is Level.FAIL:
            raise SettingsError(str(problem))

"""How the settings fit together (each setting's own validator already ran at load)."""

from __future__ import annotations

import ipaddress

from sentiguard.doctor.report import Result, fail, ok, warn
from sentiguard.settings import Settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_sources(settings: Settings) -> str:
    """Where the values came from, e.g. "conf/x.toml + 3 SENTIGUARD_* variables"."""
    sources = set(settings.sources.values()) - {"default"}
    env = sum(1 for v in sources if v.startswith("environment "))
    parts = sorted(v for v in sources if not v.startswith("environment "))
    if env:
        parts.append(f"{env} SENTIGUARD_* variable{'s' if env > 1 else ''}")
    return " + ".join(parts) if parts else "built-in defaults"


def check_settings(settings: Settings) -> list[Result]:
    """What each setting's own validator cannot see: how settings fit together.

    (A wrong type or range never gets here: loading the settings already refused it.)
    """
    s = settings.get
    origin = describe_sources(settings)
    problems: list[Result] = []
    workers, base, gw_port = (
        int(s("primary.workers")),
        int(s("primary.base_port")),
        int(s("gateway.port")),
    )
    if base <= gw_port < base + workers:
        problems.append(
            fail(
                "settings",
                f"gateway.port {gw_port} is one of the worker ports {base}..{base + workers - 1}",
                "set gateway.port or primary.base_port so the ranges do not overlap",
            )
        )
    if base + workers - 1 > 65535:
        problems.append(
            fail(
                "settings",
                f"worker ports run past 65535 ({base} + {workers} workers)",
                "lower primary.base_port",
            )
        )
    capacity = workers * int(s("gateway.max_in_flight_per_worker")) + int(
        s("gateway.fallback_capacity")
    )
    if int(s("gateway.threads")) <= capacity:
        problems.append(
            fail(
                "settings",
                f"gateway.threads {s('gateway.threads')} <= primary + fallback capacity "
                f"{capacity}: overload would queue instead of being shed",
                f"set gateway.threads above {capacity}",
            )
        )
    if int(s("watchdog.memory_critical_mb")) <= int(s("watchdog.memory_limit_mb")):
        problems.append(
            fail(
                "settings",
                "watchdog.memory_critical_mb is not above watchdog.memory_limit_mb",
                "set memory_critical_mb higher than memory_limit_mb",
            )
        )
    if int(s("watchdog.probe_budget_ms")) > int(s("watchdog.probe_timeout_ms")):
        problems.append(
            warn(
                "settings",
                "watchdog.probe_budget_ms exceeds probe_timeout_ms: the budget never applies",
                "set probe_budget_ms at or below probe_timeout_ms",
            )
        )
    host = str(s("gateway.host"))
    if (
        not _is_loopback(host)
        and not s("gateway.api_key")
        and not s("gateway.allow_public_without_key")
    ):
        problems.append(
            fail(
                "settings",
                f"gateway.host {host} is beyond loopback and no API key is set: "
                f"the gateway will refuse to start",
                "export SENTIGUARD_GATEWAY_API_KEY=$(openssl rand -hex 32), or set "
                "gateway.allow_public_without_key = true on a network already private",
            )
        )
    if s("faults.enabled"):
        problems.append(
            warn(
                "settings",
                "faults.enabled: workers accept fault injection (tests only)",
                "unset SENTIGUARD_FAULTS_ENABLED / faults.enabled in production",
            )
        )
    return problems or [ok("settings", f"consistent (from {origin})")]

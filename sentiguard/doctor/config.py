"""How the settings fit together, as doctor reports it (the rules live with the settings)."""

from __future__ import annotations

from sentiguard.doctor.report import Result, fail, ok, warn
from sentiguard.settings import Settings
from sentiguard.settings.rules import Level, problems


def describe_sources(settings: Settings) -> str:
    """Where the values came from, e.g. "conf/x.toml + 3 SENTIGUARD_* variables"."""
    sources = set(settings.sources.values()) - {"default"}
    env = sum(1 for v in sources if v.startswith("environment "))
    parts = sorted(v for v in sources if not v.startswith("environment "))
    if env:
        parts.append(f"{env} SENTIGUARD_* variable{'s' if env > 1 else ''}")
    return " + ".join(parts) if parts else "built-in defaults"


def check_settings(settings: Settings) -> list[Result]:
    """Every cross-setting rule, one line each. `load` already refused the failures for
    every command; doctor shows them for settings built without that check, and shows
    the warnings, which still start."""
    results = [
        (fail if p.level is Level.FAIL else warn)("settings", p.message, p.fix)
        for p in problems(settings)
    ]
    return results or [ok("settings", f"consistent (from {describe_sources(settings)})")]

"""The running service, when there is one: is it healthy, ready, and what does it serve."""

from __future__ import annotations

from typing import Any

from sentiguard import __version__
from sentiguard.doctor.report import Result, fail, ok, warn
from sentiguard.runtime.endpoints import gateway_get_json
from sentiguard.runtime.locate import Target
from sentiguard.runtime.paths import RunDir

CHECK = "service"


def _get(target: Target, path: str) -> tuple[int, dict[str, Any]] | None:
    try:
        code, body = gateway_get_json(target.settings, path, timeout_s=2.0)
    except (OSError, ValueError):
        return None
    return code, body or {}


def _versions(status: dict[str, Any]) -> str:
    primary = sorted({str(w.get("model_version")) for w in status.get("workers") or []} - {"None"})
    fallback = (status.get("fallback") or {}).get("model_version")
    return f"primary {', '.join(primary) or '-'}, fallback {fallback or '-'}"


def check_service(target: Target) -> Result:
    """PASS when nothing runs (said so) or the service answers healthy and ready; WARN when
    it is degraded; FAIL when a live `up` is recorded but its gateway does not answer."""
    who = f"{target.url}" + (
        f" (up pid {target.record.pid}, since {target.record.since()})" if target.record else ""
    )
    health = _get(target, "/health")
    if health is None:
        if target.record is None:
            return ok(CHECK, f"not running (nothing answers at {target.url})")
        return fail(
            CHECK,
            f"{who} is recorded as running but its gateway does not answer",
            f"read {RunDir(target.settings).log('gateway')} and `sentiguard status`",
        )
    code, body = health
    if "reasons" not in body:
        return fail(
            CHECK,
            f"{target.url}/health answered {code} without a sentiguard body: not our gateway",
            "stop that process, or point doctor at the service with --port/--url",
        )
    ready = _get(target, "/ready")
    answer = _get(target, "/status")
    ready_text = "ready" if ready and ready[0] == 200 else "not ready"
    detail = f"{who}: health {body.get('status')}, {ready_text}, "
    if answer is not None and answer[0] == 200:
        workers = answer[1].get("workers") or []
        serving = sum(1 for w in workers if w.get("ready"))
        detail += f"{serving}/{len(workers)} primary workers ready; models {_versions(answer[1])}"
    else:
        detail += f"/status answered {answer[0] if answer else 'nothing'} (API key?)"
    detail += f"; cli {__version__}"
    reasons = body.get("reasons") or []
    if body.get("status") != "ok" or ready_text != "ready":
        return warn(
            CHECK,
            f"{detail}; " + "; ".join(str(r) for r in reasons),
            "see `sentiguard status` and `sentiguard logs`",
        )
    return ok(CHECK, detail)

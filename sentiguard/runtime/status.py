"""`sentiguard status`: the service's state as the gateway reports it, for a person or a tool.

The table comes from the gateway's /status (which never waits on a worker) and the last
decisions from the watchdog's own log. When the gateway does not answer, supervisord's view
of the programs is printed instead, with where to look next.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from sentiguard.errors import ExitCode
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.endpoints import gateway_get_json, gateway_url
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.service import not_running
from sentiguard.settings import Settings


def last_decisions(path: Path, count: int = 5, tail_bytes: int = 65536) -> list[dict[str, Any]]:
    """The last `count` JSON lines of the watchdog's decision log (unparseable lines skipped)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            chunk = f.read()
    except FileNotFoundError:
        return []
    records = []
    for line in chunk.decode("utf-8", "replace").splitlines()[-count * 2 :]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records[-count:]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers), *(fmt.format(*r) for r in rows)]


def render_status(status: dict[str, Any], decisions: list[dict[str, Any]]) -> str:
    """The human-readable `sentiguard status` text for a gateway /status body."""
    columns = [
        "name",
        "pid",
        "port",
        "state",
        "ready",
        "rss_mb",
        "uss_mb",
        "restarts",
        "breaker",
        "in_flight",
        "reason",
    ]
    workers = status.get("workers") or []
    # Restarts read best as only the causes that happened.
    rows = [
        [
            _cell(
                {k: n for k, n in v.items() if n} if c == "restarts" and isinstance(v, dict) else v
            )
            for c in columns
            for v in [w.get(c)]
        ]
        for w in workers
    ]
    lines = ["workers", *("  " + r.rstrip() for r in _table(columns, rows))]
    for section in ("fallback", "watchdog"):
        # The decisions are shown below, from the watchdog's own log.
        info = {k: v for k, v in (status.get(section) or {}).items() if k != "decisions"}
        lines.append(
            f"{section}: " + ("  ".join(f"{k}={_cell(v)}" for k, v in info.items()) or "-")
        )
    lines.append(f"last watchdog decisions ({len(decisions)})")
    if not decisions:
        lines.append("  none yet")
    for d in decisions:
        known = ("ts", "event", "worker", "pid", "reason", "action")
        head = " ".join(_cell(d.get(k)) for k in known if k in d)
        rest = " ".join(f"{k}={_cell(v)}" for k, v in d.items() if k not in known)
        lines.append(f"  {head} {rest}".rstrip())
    return "\n".join(lines)


def _supervisor_states(settings: Settings) -> list[str] | None:
    """`name STATE pid` for each program when supervisord answers, else None."""
    try:
        infos = sv.rpc(settings, timeout=2.0).supervisor.getAllProcessInfo()
    except OSError:
        return None
    return [f"{i['group']}:{i['name']} {i['statename']} pid={i['pid'] or '-'}" for i in infos]


def status(settings: Settings, as_json: bool = False) -> int:
    """Print the gateway's /status (a table, or its JSON); non-zero when it does not answer."""
    url = gateway_url(settings, "/status")
    try:
        code, body = gateway_get_json(settings, "/status", timeout_s=2.0)
    except (OSError, ValueError) as e:
        states = _supervisor_states(settings)
        if states is None:
            print(f"sentiguard: {not_running(settings)}", file=sys.stderr)
        else:
            print(
                f"sentiguard: supervisord is running but the gateway does not answer on {url} "
                f"({e}). Hint: read {RunDir(settings).log('gateway')}. Programs:\n  "
                + "\n  ".join(states),
                file=sys.stderr,
            )
        return ExitCode.ERROR
    if code != 200 or not isinstance(body, dict):
        print(f"sentiguard: {url} answered {code}: {body!r}", file=sys.stderr)
        return ExitCode.ERROR
    if as_json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return ExitCode.OK
    decisions = last_decisions(RunDir(settings).watchdog_log)
    print(render_status(body, decisions))
    return ExitCode.OK

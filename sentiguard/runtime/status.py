"""`sentiguard status`: the service's state as the gateway reports it, for a person or a tool.

The service is the one `runtime.locate` finds (named on stderr). The table comes from the
gateway's /status (which never waits on a worker), the gateway and watchdog processes with
their uptime and restarts, and the last decisions from the watchdog's own log. When the
gateway does not answer, supervisord's view of the programs is printed instead, with where
to look next; with `--json` stdout then holds one `{"error": {...}}` object.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from sentiguard.errors import ExitCode
from sentiguard.runtime import supervisord as sv
from sentiguard.runtime.endpoints import gateway_get_json, gateway_url
from sentiguard.runtime.locate import Target, announce
from sentiguard.runtime.paths import RunDir
from sentiguard.runtime.service import not_running
from sentiguard.settings import Settings


def last_decisions(path: Path, count: int = 5, tail_bytes: int = 65536) -> list[dict[str, Any]]:
    """The last `count` JSON lines of the watchdog's decision log (unparseable lines
    skipped), reaching into the newest rotated file (`.1`) just after a rotation."""
    records: list[dict[str, Any]] = []
    for source in (path, path.with_name(path.name + ".1")):
        try:
            with source.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - tail_bytes))
                chunk = f.read()
        except FileNotFoundError:
            continue
        older = []
        for line in chunk.decode("utf-8", "replace").splitlines()[-count * 2 :]:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                older.append(record)
        records = older + records
        if len(records) >= count:
            break
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
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers), *(fmt.format(*r) for r in rows)]


def duration(seconds: float | None) -> str:
    """`42s`, `5m12s`, `3h04m`, `2d03h`: an uptime at a glance."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _uptime(pid: Any) -> float | None:
    try:
        return time.time() - psutil.Process(int(pid)).create_time()
    except (psutil.Error, TypeError, ValueError):
        return None


def process_rows(
    status: dict[str, Any], restarts: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """The gateway processes and the watchdog: name, pid, uptime_s, restarts.

    Every gateway process is in `gateways` (`gateway_I`; one that did not answer the process
    that built the body has no pid); the watchdog's pid is in its report and its uptime is
    read from this host. `restarts` (supervisord's counts, `sv.restarts`) fills what the
    body does not say.
    """
    restarts = restarts or {}
    rows = []
    for i, g in enumerate(status.get("gateways") or []):
        name = str(g.get("name") or f"gateway_{i}")
        count = g.get("restarts")
        rows.append(
            {
                "name": name,
                "pid": g.get("pid"),
                "uptime_s": g.get("uptime_s"),
                "restarts": count if count is not None else restarts.get(name),
            }
        )
    pid = (status.get("watchdog") or {}).get("pid")
    rows.append(
        {
            "name": "watchdog",
            "pid": pid,
            "uptime_s": _uptime(pid),
            "restarts": restarts.get("watchdog"),
        }
    )
    return rows


def programs_lines(report: dict[str, Any] | None) -> list[str]:
    """What `up` keeps (`runtime.escalation`): each gateway process and the watchdog with its
    supervisord state, starts in the crash-loop window, restarts `up` made and the wait
    before the next, then every problem in words."""
    if not report:
        return ["programs kept by `up`: no report (is `up` running?)"]
    stale = " STALE: `up` has not written it since; is it running?" if report.get("stale") else ""
    columns = ["name", "state", "starts_in_window", "crash_loop", "restarts_by_up"]
    rows = [
        [_cell(p.get(c)) for c in columns] + [_cell(p.get("next_restart_in_s"))]
        for p in report.get("programs") or []
    ]
    lines = [f"programs kept by `up` (report {_cell(report.get('age_s'))} s old){stale}"]
    lines += ["  " + r.rstrip() for r in _table([*columns, "next_restart_in_s"], rows)]
    lines += [f"  problem: {problem}" for problem in report.get("problems") or []]
    return lines


def render_status(
    status: dict[str, Any],
    decisions: list[dict[str, Any]],
    processes: list[dict[str, Any]] | None = None,
) -> str:
    """The human-readable `sentiguard status` text for a gateway /status body."""
    columns = [
        "name",
        "pid",
        "port",
        "state",
        "ready",
        "rss_mb",
        "uss_mb",
        "memory_limit_mb",  # the watchdog's, per worker ("auto": derived at its start)
        "restarts",
        "breaker",
        "in_flight",
        "capacity",  # the concurrency limit the gateway learnt for it
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
    procs = process_rows(status) if processes is None else processes
    prow = [
        [_cell(p["name"]), _cell(p["pid"]), duration(p["uptime_s"]), _cell(p["restarts"])]
        for p in procs
    ]
    lines.append("processes")
    lines += ["  " + r.rstrip() for r in _table(["name", "pid", "uptime", "restarts"], prow)]
    lines += programs_lines(status.get("programs"))
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


def _fail(target: Target, as_json: bool, code: str, message: str, **extra: Any) -> int:
    """Say why on stderr; with --json, stdout holds only the error object."""
    if as_json:
        error = {"code": code, "message": message, "service": target.describe(), **extra}
        print(json.dumps({"error": error}, ensure_ascii=False, indent=2))
    print(f"sentiguard: {message}", file=sys.stderr)
    return ExitCode.ERROR


def status(settings: Settings, as_json: bool = False, url: str | None = None) -> int:
    """Print the gateway's /status (a table, or its JSON); non-zero when it does not answer."""
    target = announce(settings, url)
    settings = target.settings
    where = gateway_url(settings, "/status")
    try:
        code, body = gateway_get_json(settings, "/status", timeout_s=2.0)
    except (OSError, ValueError) as e:
        states = _supervisor_states(settings)
        if states is None:
            return _fail(target, as_json, "not_running", not_running(settings))
        message = (
            f"supervisord is running but the gateway does not answer on {where} ({e}). "
            f"Hint: read {RunDir(settings).log('gateway_0')} (one log per gateway process). "
            f"Programs:\n  " + "\n  ".join(states)
        )
        return _fail(target, as_json, "gateway_unreachable", message, programs=states)
    if code != 200 or not isinstance(body, dict):
        message = f"{where} answered {code}: {body!r}. Hint: is that a sentiguard gateway?"
        return _fail(target, as_json, "bad_status", message, status=code)
    if as_json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return ExitCode.OK
    decisions = last_decisions(RunDir(settings).watchdog_log)
    print(render_status(body, decisions, process_rows(body, sv.restarts(settings))))
    return ExitCode.OK

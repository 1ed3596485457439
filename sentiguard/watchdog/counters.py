"""Restart counts that survive a restart of the watchdog itself.

The counts live in the watchdog's memory and are reported to the gateway every round; a
watchdog that crashed and was restarted by supervisord would report zeros and erase them.
So they are also kept in `<run_dir>/watchdog_restarts.json`, tagged with the pid of the
supervisord they belong to: a new `sentiguard up` (a new supervisord) starts from zero.
"""

from __future__ import annotations

import json

from sentiguard.runtime.paths import RunDir, write_atomic
from sentiguard.settings import Settings

Counts = dict[str, dict[str, int]]  # worker -> cause -> restarts


def load(settings: Settings, supervisord_pid: int) -> Counts:
    """The saved counts of this supervisord's run, or {} (none, unreadable, or older run)."""
    try:
        data = json.loads(RunDir(settings).restart_counts.read_text(encoding="utf-8"))
        if int(data["supervisord_pid"]) != supervisord_pid:
            return {}
        return {
            str(worker): {str(cause): int(n) for cause, n in causes.items()}
            for worker, causes in data["restarts"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def save(settings: Settings, supervisord_pid: int, counts: Counts) -> None:
    path = RunDir(settings).restart_counts
    path.parent.mkdir(parents=True, exist_ok=True)
    # A crash mid-write leaves the previous counts, never half a file.
    write_atomic(path, json.dumps({"supervisord_pid": supervisord_pid, "restarts": counts}))

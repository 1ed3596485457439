"""The watchdog's decision log: one JSON line per decision, and the last few for reports.

Every decision about a worker is one line of `<log_dir>/watchdog.jsonl` with `ts`,
`event`, `worker`, `pid`, `reason`, its numbers, and `action` last (docs/internals.md).
The gateway's `/status` shows the most recent ones, from the watchdog's summary report.
Events about the watchdog itself (started, stopped, supervisord or gateway unreachable)
go to the same file but are not decisions about a worker, so they are not kept.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from sentiguard.logs import EventLog, now_iso
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings
from sentiguard.watchdog.policy import WorkerRecord

DECISIONS_KEPT = 20


class DecisionLog:
    """Thread-safe: the loop and the action threads decide at the same time."""

    def __init__(self, log: EventLog, keep: int = DECISIONS_KEPT) -> None:
        self.log = log
        self._kept: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings) -> DecisionLog:
        """The log of this service instance: stdout and `<log_dir>/watchdog.jsonl`."""
        return cls(EventLog.rotating(RunDir(settings).watchdog_log, settings))

    def __call__(self, event: str, **fields: Any) -> None:
        """Log an event of the watchdog itself (not kept for reports)."""
        self.log(event, **fields)

    def decide(
        self, rec: WorkerRecord, event: str, reason: str | None, action: str, **fields: Any
    ) -> None:
        """Log one decision about a worker and keep it for the gateway's /status."""
        record: dict[str, Any] = {"worker": rec.name, "pid": rec.pid or None, "reason": reason}
        record.update(fields)
        record["action"] = action
        self.log(event, **record)
        with self._lock:
            self._kept.append({"ts": now_iso(), "event": event, **record})

    def recent(self, count: int = 10) -> list[dict[str, Any]]:
        """The last `count` decisions, oldest first."""
        with self._lock:
            return list(self._kept)[-count:]

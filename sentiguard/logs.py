"""One JSON object a line: the log format every sentiguard process writes.

Lines carry `ts` (ISO 8601, UTC, milliseconds) and `event` first, then the fields given,
numbers in named units (`rss_mb`, `probe_ms`). supervisord captures stdout and rotates it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

_lock = threading.Lock()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_event(event: str, **fields: Any) -> str:
    record = {"ts": now_iso(), "event": event, **fields}
    return json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))


class EventLog:
    """Writes events to a stream and, optionally, appends them to a .jsonl file."""

    def __init__(self, stream: IO[str] | None = None, path: Path | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: str, **fields: Any) -> None:
        line = format_event(event, **fields)
        with _lock:
            print(line, file=self.stream, flush=True)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")


log_event = EventLog()


def exit_now(code: int) -> NoReturn:
    """End a service process once its work is drained and logged, skipping teardown.

    Interpreter teardown with torch, ModelScope or scikit-learn loaded takes seconds of
    CPU on a busy host (7 s measured), and exit joins executor threads still waiting on a
    probe to a worker that is stopping too: supervisord's stop would wait for nothing and
    then SIGKILL a process that had already finished.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

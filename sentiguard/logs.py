"""One JSON object a line: the log format every sentiguard process writes.

Lines carry `ts` (ISO 8601, UTC, milliseconds) and `event` first, then the fields given,
numbers in named units (`rss_mb`, `probe_ms`). supervisord captures stdout and rotates it.

An `EventLog` with a `path` also appends each line to that file (the watchdog's
`watchdog.jsonl`, which `sentiguard reload` appends to as well). The file never stops the
process:

- When it cannot be written (directory missing and not creatable, not writable, disk
  full: any `OSError`), the line still goes to the stream, one `log_file_unwritable` line
  says which path failed, why, and the fix, and the file is tried again every `retry_s`
  seconds; the first line that lands again is preceded by `log_file_writable` with the
  number of lines the file missed. A stream that is not stdout/stderr (reload's quiet one)
  gets stderr added for the outage, so the lines are not lost.
- With `max_bytes`, the file rotates by size like supervisord's own logs
  (`service.log_max_mb`, `service.log_backups`): `name` -> `name.1` -> ... -> `name.N`,
  the oldest dropped (`backups` 0: the file starts again empty). Writers hold an exclusive
  `flock` on the file while they check its size, rotate and append, and reopen when the
  name moved under them, so the watchdog and a `reload` appending at once neither lose a
  line nor rotate twice. Readers (`status`, `sentiguard logs`) read the file without
  locking; a rotation is a rename, so they see the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from sentiguard.settings import Settings

_lock = threading.Lock()
RETRY_S = 5.0  # how often a file that failed is tried again
_OPEN_TRIES = 4  # opens per line: the name can move (rotation by another writer) meanwhile


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_event(event: str, **fields: Any) -> str:
    record = {"ts": now_iso(), "event": event, **fields}
    return json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))


class EventLog:
    """Writes events to a stream and, optionally, appends them to a .jsonl file (rotated
    at `max_bytes` when it is above 0, keeping `backups` old copies). See the module doc."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        path: Path | None = None,
        *,
        max_bytes: int = 0,
        backups: int = 0,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.retry_s = retry_s
        self.clock = clock
        self._retry_at: float | None = None  # set while the file is failing
        self._missed = 0  # lines the file missed during this outage
        if path is not None:
            with contextlib.suppress(OSError):  # it may be fixed by the first line: retried then
                path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def rotating(cls, path: Path, settings: Settings, stream: IO[str] | None = None) -> EventLog:
        """A log appending to `path`, rotated like supervisord's logs of these settings."""
        service = settings.service
        return cls(
            stream,
            path,
            max_bytes=int(service.log_max_mb * 1024 * 1024),
            backups=service.log_backups,
        )

    def __call__(self, event: str, **fields: Any) -> None:
        line = format_event(event, **fields)
        with _lock:
            # The file first: a warning or recovery notice it causes precedes the line.
            if self.path is not None:
                self._to_file(self.path, line)
            # A stream that went away (the supervisord reading a program's stdout died)
            # costs this line, never the request or the decision that logged it.
            with contextlib.suppress(OSError, ValueError):
                print(line, file=self.stream, flush=True)

    # --- the file: everything below runs under _lock ------------------------------------

    def _to_file(self, path: Path, line: str) -> None:
        if self._retry_at is not None and self.clock() < self._retry_at:
            self._miss(line)
            return
        try:
            if self._retry_at is not None:
                recovered = format_event(
                    "log_file_writable",
                    path=str(path),
                    missed_lines=self._missed,
                    action="appending again",
                )
                self._append(path, recovered + "\n")
                print(recovered, file=self.stream, flush=True)
                self._retry_at, self._missed = None, 0
            self._append(path, line + "\n")
        except OSError as e:
            first = self._retry_at is None
            self._retry_at = self.clock() + self.retry_s
            if first:
                self._warn(path, e)
            self._miss(line)

    def _append(self, path: Path, text: str) -> None:
        """Append `text` under an exclusive flock, rotating first when it would not fit."""
        data = text.encode("utf-8")
        for _ in range(_OPEN_TRIES):
            fd = _open_append(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
                if not _same_file(fd, path):
                    continue  # another writer rotated it while we waited: reopen the name
                size = os.fstat(fd).st_size
                if self.max_bytes > 0 and size > 0 and size + len(data) > self.max_bytes:
                    self._rotate(path)
                    continue  # write to the new, empty file
                written = os.write(fd, data)
                if written < len(data):
                    raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes written")
                return
            finally:
                os.close(fd)
        raise OSError(errno.EAGAIN, f"{path} kept moving while appending to it")

    def _rotate(self, path: Path) -> None:
        """`path` -> `path.1` -> ... -> `path.N` (N = backups); the oldest is dropped."""
        if self.backups <= 0:
            path.unlink(missing_ok=True)
            return
        # Renames, not writes: `paths.write_atomic` stays the one atomic write.
        for n in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{n + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))

    def _warn(self, path: Path, error: OSError) -> None:
        warning = format_event(
            "log_file_unwritable",
            path=str(path),
            reason=f"{type(error).__name__}: {error}",
            action=f"lines go to stdout/stderr only; the file is retried every {self.retry_s:g} s",
            fix=_fix(path, error),
        )
        print(warning, file=self.stream, flush=True)
        if not _is_std(self.stream):
            print(warning, file=sys.stderr, flush=True)

    def _miss(self, line: str) -> None:
        self._missed += 1
        if not _is_std(self.stream):
            print(line, file=sys.stderr, flush=True)


def _open_append(path: Path) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:  # the directory is gone (or never was): make it again
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _is_std(stream: IO[str]) -> bool:
    return stream is sys.stdout or stream is sys.stderr


def _fix(path: Path, error: OSError) -> str:
    where = path.parent
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on the disk holding {where} (or lower service.log_max_mb)"
    if error.errno == errno.EROFS:
        return f"{where} is on a read-only file system: point service.log_dir at a writable one"
    return (
        f"make {where} a directory this user ({os.getuid()}) can write, or point "
        f"service.log_dir at one; the file is picked up again within seconds"
    )


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

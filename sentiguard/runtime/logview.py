"""`sentiguard logs`: the watchdog's decisions and the workers' lifecycle, for a person.

Reads `<log_dir>/watchdog.jsonl` (every decision of the watchdog, and `sentiguard reload`'s
steps) and the lifecycle lines of each worker's log (`<log_dir>/primary_N.log`: listening,
model loaded, ready, load failed, stopping, stopped; not its request lines), oldest first,
including the files supervisord rotated (`primary_0.log.1`, ...). Each line becomes

    18:12:04.518 recycle        primary_1 pid=5123 reason=memory uss_mb=1530.2 -> drain+restart

coloured on a terminal (not with NO_COLOR, nor when piped); `--json` passes the JSON lines
through unchanged. `--worker` keeps one worker's lines, `--since 10m` the recent ones, and
`--follow` keeps printing new lines (a bounded poll that survives rotation) until Ctrl-C.
Rotated copies are read only for `--since` (they can hold hundreds of megabytes).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sentiguard.errors import ExitCode, SentiguardError
from sentiguard.runtime.endpoints import WORKER_PREFIX, worker_index, workers
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings

# The worker log lines that tell its life; the rest (requests, errors) stay in its log.
LIFECYCLE = frozenset(
    {
        "worker_listening",
        "model_loaded",
        "worker_ready",
        "model_load_failed",
        "worker_stopping",
        "worker_stopped",
        "port_in_use",
        "config_error",
        "fault_injected",
        "signal_ignored",
    }
)
BAD = frozenset(
    {
        "crash",
        "killed",
        "park",
        "start_failed",
        "start_timeout",
        "model_load_failed",
        "gateway_unreachable",
        "supervisor_unreachable",
        "round_failed",
        "port_in_use",
        "config_error",
    }
)
GOOD = frozenset({"ready", "worker_ready", "gateway_reachable", "supervisor_reachable"})
ACTION = frozenset(
    {"recycle", "drained", "stopped", "start", "reload_step", "memory_hold", "recycle_held"}
)
# Fields the line shows in its own places; every other field is printed as key=value,
# except a few start-up measurements a readable line can do without (--json keeps them).
PLACED = ("ts", "event", "worker", "action", "fix")
BRIEF = {
    "worker_ready": frozenset(
        {"model", "since_exec_s", "cpu_s", "import_s", "load_s", "batch_lanes", "torch_threads"}
    )
}
EVENT_WIDTH = 14
POLL_S = 0.5
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> timedelta:
    """`30s`, `10m`, `2h`, `1d` as a timedelta; SentiguardError with an example otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise SentiguardError(
            f"--since {text!r} is not a duration. Hint: a number and a unit: 30s, 10m, 2h, 1d."
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_ts(value: Any) -> datetime | None:
    """The `ts` of a log line (ISO 8601, `Z` for UTC) as an aware datetime, or None."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Entry:
    """One log line: its text as written, and the JSON object it holds."""

    raw: str
    record: dict[str, Any]

    @property
    def ts(self) -> str:
        return str(self.record.get("ts", ""))


# A worker's log is mostly request lines: find the lifecycle ones before parsing JSON.
_LIFECYCLE_TEXT = re.compile(r'"event":\s*"(' + "|".join(sorted(LIFECYCLE)) + r')"')


def parse_line(line: str, lifecycle_only: bool) -> Entry | None:
    """An Entry for a JSON log line (a worker's: only its lifecycle events), else None."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    if lifecycle_only and _LIFECYCLE_TEXT.search(text) is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or "event" not in record:
        return None
    if lifecycle_only and record["event"] not in LIFECYCLE:
        return None
    return Entry(text, record)


@dataclass(frozen=True)
class Filter:
    """Which lines to show: one worker's (`worker`), and/or those at or after `since`."""

    worker: str | None = None
    since: datetime | None = None

    def keep(self, entry: Entry) -> bool:
        if self.worker is not None and entry.record.get("worker") != self.worker:
            return False
        if self.since is not None:
            ts = parse_ts(entry.record.get("ts"))
            if ts is None or ts < self.since:
                return False
        return True


@dataclass(frozen=True)
class Source:
    """One log file and whether only its lifecycle lines count (a worker's log)."""

    path: Path
    lifecycle_only: bool


def sources(settings: Settings, worker: str | None = None) -> list[Source]:
    """The watchdog's decision log and each worker's log (one worker's with `worker`)."""
    run = RunDir(settings)
    found = [Source(run.watchdog_log, False)]
    pattern = f"{worker}.log" if worker else f"{WORKER_PREFIX}*.log"
    found += [Source(p, True) for p in sorted(run.logs.glob(pattern))]
    return found


def rotated(path: Path) -> list[Path]:
    """`path` and its rotated copies (`name.1` is newer than `name.2`), oldest first."""
    copies = []
    for p in path.parent.glob(f"{path.name}.*"):
        suffix = p.name[len(path.name) + 1 :]
        if suffix.isdigit():
            copies.append((int(suffix), p))
    return [p for _, p in sorted(copies, reverse=True)] + [path]


def read_entries(source: Source, with_rotated: bool) -> Iterator[Entry]:
    for path in rotated(source.path) if with_rotated else [source.path]:
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    entry = parse_line(line, source.lifecycle_only)
                    if entry is not None:
                        yield entry
        except FileNotFoundError:
            continue


def collect(found: Iterable[Source], keep: Filter, with_rotated: bool) -> list[Entry]:
    """Every kept entry of every source, merged in time order (stable within a file)."""
    entries = [e for s in found for e in read_entries(s, with_rotated) if keep.keep(e)]
    return sorted(entries, key=lambda e: e.ts)


class Painter:
    """ANSI colours when `enabled`, else the text unchanged."""

    RED, GREEN, YELLOW, CYAN, DIM, BOLD = "31", "32", "33", "36", "2", "1"

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled and text else text


def use_colour(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    return bool(stream.isatty()) and not env.get("NO_COLOR")


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _clock(ts: str, today: str) -> str:
    when = parse_ts(ts)
    if when is None:
        return ts or "-"
    local = when.astimezone()
    text = local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    day = local.strftime("%Y-%m-%d")
    return text if day == today else f"{day} {text}"


def _colour(event: str, paint: Painter) -> str:
    """Red for a failure, green for a recovery, yellow for an action taken, else bold."""
    if event in BAD:
        return paint.RED
    if event in GOOD:
        return paint.GREEN
    return paint.YELLOW if event in ACTION else paint.BOLD


def format_entry(entry: Entry, paint: Painter, today: str | None = None) -> str:
    """One readable line: time, event, worker, the other fields, `-> action`, `fix: ...`."""
    r = entry.record
    today = today or datetime.now().astimezone().strftime("%Y-%m-%d")
    event = str(r.get("event"))
    parts = [paint(_clock(str(r.get("ts", "")), today), paint.DIM)]
    parts.append(paint(event.ljust(EVENT_WIDTH), _colour(event, paint)))
    if r.get("worker"):
        parts.append(paint(str(r["worker"]), paint.CYAN))
    hidden = BRIEF.get(event, frozenset())
    parts += [
        f"{paint(k, paint.DIM)}={_value(v)}"
        for k, v in r.items()
        if k not in PLACED and k not in hidden and v is not None
    ]
    if r.get("action"):
        parts.append(f"-> {r['action']}")
    if r.get("fix"):
        parts.append(paint(f"fix: {r['fix']}", paint.YELLOW))
    return " ".join(parts).rstrip()


class Follower:
    """Yields the entries appended to the sources, polling every `poll_s` seconds.

    Starts at each file's end. A file that shrank or was replaced (supervisord rotated it)
    is read again from its start; a worker log that appears later is picked up.
    """

    def __init__(
        self,
        find: Callable[[], list[Source]],
        poll_s: float = POLL_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.find = find
        self.poll_s = poll_s
        self.sleep = sleep
        self._at: dict[Path, tuple[int, int]] = {}  # path -> (inode, offset)
        for source in find():
            self._at[source.path] = _position(source.path, at_end=True)

    def poll(self) -> list[Entry]:
        """The complete lines appended since the last poll, in time order."""
        new: list[Entry] = []
        for source in self.find():
            inode, offset = self._at.get(source.path, (0, 0))
            try:
                stat = source.path.stat()
            except FileNotFoundError:
                continue
            chunks = []
            if stat.st_ino != inode or stat.st_size < offset:
                # Rotated (the old file is now `name.1`: read what it got since) or
                # truncated; then the new file from its start.
                old = source.path.with_name(source.path.name + ".1")
                if inode and offset and _inode(old) == inode:
                    chunks.append(_read_from(old, offset)[0])
                offset = 0
            chunk, end = _read_from(source.path, offset)
            chunks.append(chunk)
            self._at[source.path] = (stat.st_ino, offset + end)
            for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
                entry = parse_line(line, source.lifecycle_only)
                if entry is not None:
                    new.append(entry)
        return sorted(new, key=lambda e: e.ts)

    def __iter__(self) -> Iterator[Entry]:
        while True:
            yield from self.poll()
            self.sleep(self.poll_s)


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """The complete lines of `path` after `offset`, and how many bytes they take (a
    half-written last line waits for the next poll)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return b"", 0
    end = chunk.rfind(b"\n") + 1
    return chunk[:end], end


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return 0


def _position(path: Path, at_end: bool) -> tuple[int, int]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (stat.st_ino, stat.st_size if at_end else 0)


def check_worker(settings: Settings, worker: str) -> None:
    """SentiguardError naming the workers when `worker` is not a worker's name."""
    try:
        worker_index(worker)
    except ValueError:
        names = ", ".join(w.name for w in workers(settings))
        raise SentiguardError(
            f"--worker {worker!r} is not a worker name. Hint: one of {names}."
        ) from None


def logs_command(
    settings: Settings,
    *,
    follow: bool = False,
    worker: str | None = None,
    since: str | None = None,
    as_json: bool = False,
    out: IO[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Print the decisions and lifecycle lines (then follow them); an exit code."""
    out = out if out is not None else sys.stdout
    if worker is not None:
        check_worker(settings, worker)
    start = None
    if since is not None:
        start = (now or datetime.now(UTC)) - parse_since(since)
    keep = Filter(worker, start)
    paint = Painter(use_colour(out) and not as_json)

    def show(entry: Entry) -> None:
        print(entry.raw if as_json else format_entry(entry, paint), file=out, flush=True)

    def find() -> list[Source]:
        return sources(settings, worker)

    follower = Follower(find) if follow else None  # positions taken before the first read
    entries = collect(find(), keep, with_rotated=since is not None)
    for entry in entries:
        show(entry)
    if follower is None:
        if not entries and not as_json:
            where = RunDir(settings).logs
            print(f"sentiguard: no log lines to show in {where}", file=sys.stderr)
        return ExitCode.OK
    try:
        for entry in follower:
            if keep.keep(entry):
                show(entry)
    except KeyboardInterrupt:
        pass
    return ExitCode.OK

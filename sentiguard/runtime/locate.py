"""Which running service a command talks to: the record `up` leaves in the run directory.

`sentiguard up` writes `<run_dir>/service.json` once supervisord runs (`write_record`): the
address and port it serves on, its own pid and its start time. It removes the file when it
stops cleanly; a record whose `up` is gone (killed) is stale and ignored, and the commands
say so. `status`, `analyze`, `reload`, `down` and `doctor` call `locate(settings)` and
print `target.line()` on stderr, so the operator always sees which service answered.

Where the gateway is, first found wins, for the host and the port each:

1. `--url URL` on the command line (host and port);
2. a value that was set: `--port`, `SENTIGUARD_GATEWAY_PORT`/`_HOST`, a config file
   (`settings.sources` tells a set value from a built-in default);
3. the record of a live `up` in the run directory;
4. the built-in defaults.

A built-in default never beats the record; a set value that differs from a live record is
used, with a note naming the recorded service.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from sentiguard import settings as settings_mod
from sentiguard.errors import SettingsError
from sentiguard.runtime.endpoints import gateway_url
from sentiguard.runtime.net import client_host
from sentiguard.runtime.paths import RunDir, write_atomic
from sentiguard.settings import Settings

DEFAULT = "default"
RECORD = "record"
URL = "--url"


@dataclass(frozen=True)
class ServiceRecord:
    """Where one `sentiguard up` serves: its bind address, port, pid and start time."""

    host: str
    port: int
    pid: int
    started: float  # seconds since the epoch
    url: str = ""
    supervisord_pid: int | None = None

    def alive(self) -> bool:
        """True while the `up` that wrote this record runs (a reused pid does not count)."""
        try:
            created = psutil.Process(self.pid).create_time()
        except psutil.Error:
            return False
        # `started` is the create time of `up` itself; another time is a reused pid.
        return abs(created - self.started) < 1.0

    def since(self) -> str:
        return datetime.fromtimestamp(self.started).strftime("%H:%M:%S")


def write_record(settings: Settings, supervisord_pid: int | None) -> ServiceRecord:
    """Record this `up` (the calling process) as the service of `settings`' run directory."""
    record = ServiceRecord(
        host=settings.gateway.host,
        port=settings.gateway.port,
        pid=os.getpid(),
        started=round(_process_start(), 3),
        url=gateway_url(settings, "/"),
        supervisord_pid=supervisord_pid,
    )
    doc = {**asdict(record), "started_at": datetime.fromtimestamp(record.started).isoformat()}
    write_atomic(RunDir(settings).service_record, json.dumps(doc, indent=2) + "\n", private=False)
    return record


def remove_record(settings: Settings) -> None:
    """Forget the record, if it is this process's own (a clean stop of `up`)."""
    path = RunDir(settings).service_record
    record = read_record(path)
    if record is not None and record.pid == os.getpid():
        path.unlink(missing_ok=True)


def read_record(path: Path) -> ServiceRecord | None:
    """The record at `path`, or None when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return ServiceRecord(
            host=str(doc["host"]),
            port=int(doc["port"]),
            pid=int(doc["pid"]),
            started=float(doc["started"]),
            url=str(doc.get("url", "")),
            supervisord_pid=doc.get("supervisord_pid"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _process_start() -> float:
    try:
        return float(psutil.Process().create_time())
    except psutil.Error:
        return time.time()


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (run/service.json)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Target:
    """The service a command talks to: `settings` with the gateway's host and port set."""

    settings: Settings
    source: str  # URL, RECORD, DEFAULT, or a settings source ("command line", ...)
    record: ServiceRecord | None  # the live record in the run directory, if any
    record_path: Path
    note: str = ""

    @property
    def url(self) -> str:
        return gateway_url(self.settings)

    @property
    def running(self) -> bool:
        """A live `up` is recorded in the run directory."""
        return self.record is not None

    def line(self) -> str:
        """One line for stderr naming the service, e.g. `sentiguard: service at
        http://127.0.0.1:5390 (up pid 1234, since 12:03:41, from run/service.json)`."""
        where = display_path(self.record_path)
        r = self.record
        if self.source == RECORD and r is not None:
            detail = f"up pid {r.pid}, since {r.since()}, from {where}"
        elif self.source == DEFAULT:
            detail = f"built-in default; no running service recorded in {where}"
        else:
            detail = f"from {self.source}"
        text = f"sentiguard: service at {self.url} ({detail})"
        return f"{text}; {self.note}" if self.note else text

    def describe(self) -> dict[str, Any]:
        """The same facts as a JSON object (for `status --json` errors)."""
        r = self.record
        return {
            "url": self.url,
            "source": self.source,
            "record": None if r is None else asdict(r),
            "note": self.note or None,
        }


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an http URL; SettingsError with a hint for anything else."""
    parts = urlsplit(url if "//" in url else f"http://{url}")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise SettingsError(f"--url {url!r}: {e}. Hint: --url http://HOST:PORT") from e
    if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
        raise SettingsError(
            f"--url {url!r} is not the gateway's base URL. Hint: --url http://HOST:PORT "
            f"(plain http, no path), e.g. http://127.0.0.1:5000"
        )
    return parts.hostname, port


def locate(settings: Settings, url: str | None = None) -> Target:
    """Where the gateway of `settings`' service is (module docstring: the precedence)."""
    path = RunDir(settings).service_record
    found = read_record(path)
    note = ""
    record = found if found is not None and found.alive() else None
    if found is not None and record is None:
        note = f"ignored {display_path(path)}: its `up` (pid {found.pid}) is gone"
    sources = settings.sources
    host_source = sources.get("gateway.host", DEFAULT)
    port_source = sources.get("gateway.port", DEFAULT)
    host, port = settings.gateway.host, settings.gateway.port
    if url is not None:
        host, port = parse_url(url)
        source = URL
    elif record is not None and DEFAULT in (host_source, port_source):
        if host_source == DEFAULT:
            host = record.host
        if port_source == DEFAULT:
            port = record.port
        source = RECORD if port_source == DEFAULT else port_source
    else:
        set_sources = [s for s in (port_source, host_source) if s != DEFAULT]
        source = set_sources[0] if set_sources else DEFAULT
    here = (client_host(host), port)
    if record is not None and here != (client_host(record.host), record.port):
        note = (
            f"note: {display_path(path)} records another service at {record.url} "
            f"(up pid {record.pid}); pass --port {record.port} to talk to it"
        )
    if (host, port) != (settings.gateway.host, settings.gateway.port):
        overrides = {"gateway.host": host, "gateway.port": port}
        settings = settings_mod.load(base=settings, overrides=overrides, check=False)
    return Target(settings, source, record, path, note)


def announce(settings: Settings, url: str | None = None) -> Target:
    """`locate`, then name the service on stderr (stdout stays the command's own)."""
    target = locate(settings, url)
    print(target.line(), file=sys.stderr, flush=True)
    return target

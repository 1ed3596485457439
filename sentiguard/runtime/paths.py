"""The run directory and the log directory: every file the running service shares.

`RunDir(settings)` is the only place a run- or log-directory path is spelled out. Files
that several processes read are written whole (`write_atomic`: a temporary file renamed
over the old one, so a reader never sees half a file); files that hold a secret or the
supervisord config are written private (`write_private`: mode 0600 from the start).

    <run_dir>/supervisor.sock      supervisord's XML-RPC socket (0700)
    <run_dir>/supervisord.conf     rendered by `up` from the settings
    <run_dir>/supervisord.pid
    <run_dir>/control_I.sock       gateway process I's control channel (0600)
    <run_dir>/listener.sock        where `up` hands the public listening socket to each
                                   gateway process (0600, SCM_RIGHTS)
    <run_dir>/metrics/             the gateway processes' Prometheus counters
                                   (prometheus_client multiprocess mode; cleared by `up`)
    <run_dir>/secret               the per-`up` secret (0600, one line)
    <run_dir>/primary_model        the model `sentiguard reload` moved the workers to
    <run_dir>/reload.lock          held while a reload runs
    <run_dir>/watchdog_restarts.json  the watchdog's restart counts across its restarts
    <run_dir>/service.json         where `up` serves (address, port, pid, start time)
    <run_dir>/precision.json       the workers' `primary.precision = auto` choice, made
                                   once per model, machine and `up` (+ .lock)
    <log_dir>/watchdog.jsonl       the watchdog's decisions, one JSON object a line
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sentiguard.settings import Settings, project_path


class RunDir:
    """Paths of one service instance, from `service.run_dir` and `service.log_dir`."""

    def __init__(self, settings: Settings) -> None:
        self.root = project_path(settings.service.run_dir)
        self.logs = project_path(settings.service.log_dir)

    @property
    def supervisor_socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def supervisord_conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def supervisord_pid(self) -> Path:
        return self.root / "supervisord.pid"

    @property
    def control_socket(self) -> Path:
        """Gateway process 0's control socket (a gateway run alone is process 0)."""
        return self.control_socket_for(0)

    def control_socket_for(self, index: int) -> Path:
        """Gateway process `index`'s control socket: `control_<index>.sock`."""
        return self.root / f"control_{index}.sock"

    def control_sockets(self, processes: int) -> list[Path]:
        """The control sockets of gateway processes 0 .. processes - 1."""
        return [self.control_socket_for(i) for i in range(processes)]

    @property
    def listener_socket(self) -> Path:
        return self.root / "listener.sock"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def secret(self) -> Path:
        return self.root / "secret"

    @property
    def reload_model(self) -> Path:
        return self.root / "primary_model"

    @property
    def reload_lock(self) -> Path:
        return self.root / "reload.lock"

    @property
    def restart_counts(self) -> Path:
        return self.root / "watchdog_restarts.json"

    @property
    def programs_report(self) -> Path:
        return self.root / "programs.json"

    @property
    def service_record(self) -> Path:
        return self.root / "service.json"

    @property
    def precision_record(self) -> Path:
        return self.root / "precision.json"

    @property
    def watchdog_log(self) -> Path:
        return self.logs / "watchdog.jsonl"

    def log(self, name: str) -> Path:
        """A program's log file, e.g. `log("gateway_0")` -> <log_dir>/gateway_0.log."""
        return self.logs / f"{name}.log"


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only this user can read (created 0600, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_atomic(path: Path, text: str, *, private: bool = True) -> None:
    """Replace `path` with `text` in one rename, so a concurrent reader sees the old
    content or the new, never a torn file. Private (0600) unless `private=False`, which
    gives the usual mode for a user's own output (0666 less the umask)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

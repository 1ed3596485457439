"""The watchdog's typed view of supervisord's XML-RPC interface.

XML-RPC over `<run_dir>/supervisor.sock` (`sentiguard.runtime.supervisord.socket_path`) with a
timeout: supervisor's own transport has none, and a stuck call must not stall the loop.
Every call opens its own proxy and closes it, so the watchdog's action threads may call
concurrently; a unix-socket connection costs next to nothing.

Names: supervisord calls a worker `primary:primary_0` (group:process); everything here
also accepts the bare process name `primary_0`.
"""

from __future__ import annotations

import xmlrpc.client
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sentiguard.errors import SentiguardError
from sentiguard.runtime.supervisord import rpc
from sentiguard.settings import Settings

WORKER_GROUP = "primary"

# supervisor.xmlrpc.Faults: shutting down, and the two that mean "already done".
_SHUTDOWN_STATE = 6
_ALREADY_STARTED = 60
_NOT_RUNNING = 70


class ProcessState(StrEnum):
    """supervisord's process states (supervisor.states.ProcessStates), by name."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"
    UNKNOWN = "UNKNOWN"

    @property
    def dead(self) -> bool:
        """The process is gone without anyone asking it to stop (a crash or a failed start)."""
        return self in (ProcessState.EXITED, ProcessState.FATAL, ProcessState.BACKOFF)

    @property
    def alive(self) -> bool:
        return self in (ProcessState.STARTING, ProcessState.RUNNING)


@dataclass(frozen=True)
class ProcessInfo:
    """One row of getAllProcessInfo: `pid` is 0 when the process is not running."""

    group: str
    name: str
    state: ProcessState
    pid: int
    exitstatus: int

    @property
    def namespec(self) -> str:
        return f"{self.group}:{self.name}"

    @classmethod
    def from_rpc(cls, row: dict[str, Any]) -> ProcessInfo:
        try:
            state = ProcessState(row.get("statename", "UNKNOWN"))
        except ValueError:
            state = ProcessState.UNKNOWN
        return cls(
            group=str(row["group"]),
            name=str(row["name"]),
            state=state,
            pid=int(row.get("pid") or 0),
            exitstatus=int(row.get("exitstatus") or 0),
        )


class SupervisorUnavailable(SentiguardError):
    """supervisord did not answer on its unix socket, or refused a call."""


def namespec(name: str) -> str:
    return name if ":" in name else f"{WORKER_GROUP}:{name}"


class SupervisorClient:
    """Start, stop and inspect the workers through supervisord.

    Every method raises `SupervisorUnavailable` (with the fix in its message) when the
    socket is missing or the call fails; starting a started process and stopping a stopped
    one are not errors.
    """

    def __init__(self, settings: Settings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = timeout

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        try:
            # One proxy per call, closed after it: thread-safe, and no socket left open.
            with rpc(self.settings, timeout or self.timeout) as proxy:
                return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as e:
            if e.faultCode == _SHUTDOWN_STATE:  # `down` is under way: nothing to act on
                raise SupervisorUnavailable(
                    f"supervisord is shutting down ({method} refused)"
                ) from e
            raise
        except (OSError, xmlrpc.client.ProtocolError) as e:
            raise SupervisorUnavailable(
                f"supervisord did not answer {method} on its socket ({e}). Hint: is "
                f"`sentiguard up` running with this run_dir? `sentiguard status` tells."
            ) from e

    def processes(self, group: str = WORKER_GROUP) -> dict[str, ProcessInfo]:
        """The processes of one group by process name, e.g. {"primary_0": ProcessInfo}."""
        rows = self._call("getAllProcessInfo")
        infos = (ProcessInfo.from_rpc(row) for row in rows)
        return {info.name: info for info in infos if info.group == group}

    def supervisord_pid(self) -> int:
        """The pid of supervisord itself: it tells one `sentiguard up` from the next."""
        return int(self._call("getPID"))

    def info(self, name: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self._call("getProcessInfo", namespec(name)))

    def start(self, name: str) -> None:
        """Spawn the process and return at once; readiness is the caller's to wait for."""
        try:
            self._call("startProcess", namespec(name), False)
        except xmlrpc.client.Fault as e:
            if e.faultCode != _ALREADY_STARTED:
                raise SupervisorUnavailable(f"supervisord refused to start {name}: {e}") from e

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGTERM, SIGKILL after the program's stopwaitsecs) and wait.

        A process in BACKOFF is moved to STOPPED, so supervisord stops retrying it itself.
        """
        try:
            self._call("stopProcess", namespec(name), True, timeout=timeout)
        except xmlrpc.client.Fault as e:
            if e.faultCode != _NOT_RUNNING:
                raise SupervisorUnavailable(f"supervisord refused to stop {name}: {e}") from e

    def tail_log(self, name: str, length: int = 8192) -> str:
        """The end of the process's stdout log ('' when there is none)."""
        try:
            text, _offset, _overflow = self._call("tailProcessStdoutLog", namespec(name), 0, length)
        except (xmlrpc.client.Fault, SupervisorUnavailable):
            return ""
        return str(text)

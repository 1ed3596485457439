"""Where each process listens: the gateway's public URL and each primary worker's name
and loopback port. The one place these are derived from the settings."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Any

from sentiguard.runtime.net import client_host, get_json, http_url
from sentiguard.settings import Settings

WORKER_HOST = "127.0.0.1"  # workers bind loopback only: the gateway is the public face
WORKER_PREFIX = "primary_"  # supervisord's process_name = primary_%(process_num)d


@dataclass(frozen=True)
class WorkerAddress:
    """Worker `index` is `primary_<index>` on 127.0.0.1:(primary.base_port + index)."""

    index: int
    name: str
    port: int


def worker_name(index: int) -> str:
    return f"{WORKER_PREFIX}{index}"


def worker_index(name: str) -> int:
    """The index in a worker's name: `primary_3` -> 3. ValueError for another name."""
    if not name.startswith(WORKER_PREFIX):
        raise ValueError(f"{name!r} is not a primary worker name ({WORKER_PREFIX}<index>)")
    return int(name[len(WORKER_PREFIX) :])


def worker(settings: Settings, index: int) -> WorkerAddress:
    return WorkerAddress(index, worker_name(index), settings.primary.base_port + index)


def worker_port(settings: Settings, name: str) -> int:
    return worker(settings, worker_index(name)).port


def workers(settings: Settings) -> list[WorkerAddress]:
    """Every configured worker, in index order."""
    return [worker(settings, i) for i in range(settings.primary.workers)]


def gateway_client_host(settings: Settings) -> str:
    """Where a client on this host reaches the gateway (loopback for a wildcard bind)."""
    return client_host(settings.gateway.host)


def gateway_url(settings: Settings, path: str = "") -> str:
    """The gateway's URL as a client on this host reaches it, e.g. http://127.0.0.1:5000/."""
    return http_url(gateway_client_host(settings), settings.gateway.port, path)


def gateway_get_json(
    settings: Settings, path: str, timeout_s: float
) -> tuple[int, dict[str, Any] | None]:
    """GET a gateway route as a client on this host (with the API key when one is set).
    Raises OSError when nothing answers in time."""
    key = settings.gateway.api_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return get_json(gateway_client_host(settings), settings.gateway.port, path, timeout_s, headers)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    model_version: str | None = None
    pid: int | None = None
    error: str | None = None


def probe_error(e: OSError) -> str:
    """A short name for why a probe of a worker failed: timeout, refused, bad_response..."""
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e.__cause__, http.client.HTTPException):
        return "bad_response"  # get_json raises a malformed answer as an OSError
    return type(e).__name__


def probe_ready(port: int, timeout_s: float) -> Readiness:
    """GET /ready. Never raises; `ready` is True only on 200 with `"ready": true`."""
    try:
        status, body = get_json(WORKER_HOST, port, "/ready", timeout_s)
    except OSError as e:
        return Readiness(False, error=probe_error(e))
    if status != 200 or not body or body.get("ready") is not True:
        reason = (body or {}).get("reason") or f"status_{status}"
        return Readiness(False, error=str(reason))
    pid = body.get("pid")
    return Readiness(
        True,
        model_version=str(body.get("model_version")),
        pid=pid if isinstance(pid, int) else None,
    )

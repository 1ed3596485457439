"""The control channel: host-only, secret-guarded requests to the gateway.

The watchdog tells the gateway which workers to drain and what it measured through a
unix socket (`<run_dir>/control.sock`, mode 0600), never through the public port. Each
`sentiguard up` writes a fresh random secret to `<run_dir>/secret` (mode 0600); every
control request carries it in the `X-Sentiguard-Secret` header.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from sentiguard.settings import Settings

SECRET_HEADER = "X-Sentiguard-Secret"


def socket_path(settings: Settings) -> Path:
    return settings.path("service.run_dir") / "control.sock"


def secret_path(settings: Settings) -> Path:
    return settings.path("service.run_dir") / "secret"


def new_secret(settings: Settings) -> str:
    """Write a fresh secret readable only by this user; called once per `up`."""
    path = secret_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def read_secret(settings: Settings) -> str:
    return secret_path(settings).read_text().strip()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except OSError:
            sock.close()  # no socket left for the GC to warn about when nobody listens
            raise
        self.sock = sock


class ControlClient:
    """Speaks JSON to the gateway's control socket. Raises OSError when it is not there."""

    def __init__(self, settings: Settings, timeout: float = 2.0) -> None:
        self.path = socket_path(settings)
        self.secret = read_secret(settings)
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = UnixHTTPConnection(self.path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {SECRET_HEADER: self.secret, "Content-Type": "application/json"}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, (json.loads(data) if data else None)
        finally:
            conn.close()

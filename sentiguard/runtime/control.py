"""The control channel: host-only, secret-guarded requests to the gateway.

The watchdog tells the gateway processes which workers to drain and what it measured
through unix sockets (`<run_dir>/control_<i>.sock`, one a gateway process, mode 0600),
never through the public port. Each
`sentiguard up` writes a fresh random secret to `<run_dir>/secret` (mode 0600); every
control request carries it in the `X-Sentiguard-Secret` header. supervisord's unix socket
asks for HTTP basic credentials derived from the same secret (`supervisor_credentials`), so
one file guards both control paths and a new `up` replaces both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

from sentiguard.runtime.net import UnixHTTPConnection
from sentiguard.runtime.paths import RunDir, write_private
from sentiguard.settings import Settings

SECRET_HEADER = "X-Sentiguard-Secret"
SUPERVISOR_USER = "sentiguard"


def new_secret(settings: Settings) -> str:
    """Write a fresh secret readable only by this user; called once per `up`."""
    path = RunDir(settings).secret
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    write_private(path, value)
    return value


def read_secret(settings: Settings) -> str:
    return RunDir(settings).secret.read_text().strip()


def ensure_secret(settings: Settings) -> str:
    """The run directory's secret, written first when there is none yet."""
    try:
        return read_secret(settings)
    except FileNotFoundError:
        return new_secret(settings)


def supervisor_credentials(secret: str) -> tuple[str, str]:
    """(username, password) of supervisord's socket for this `up`'s secret.

    The password is derived, not the secret itself: the rendered supervisord config holds
    it in clear for supervisorctl, and need not also open the gateway's control socket.
    """
    password = hmac.new(secret.encode(), b"supervisord", hashlib.sha256).hexdigest()
    return SUPERVISOR_USER, password


class ControlClient:
    """Speaks JSON to the gateway's control socket. Raises OSError when it is not there."""

    def __init__(self, settings: Settings, timeout: float = 2.0) -> None:
        self.path = RunDir(settings).control_socket
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

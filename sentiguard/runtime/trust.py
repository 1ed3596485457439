"""Local trust between this service's own processes: the per-`up` secret on worker calls.

Every `sentiguard up` writes a fresh secret to `<run_dir>/secret` (0600, one line;
`runtime.control.new_secret`). A worker listens on loopback, where any local user can
reach it, so it trusts a caller only by that secret:

- Bearer. `/predict` and `/_fault` need `Authorization: Bearer <secret>` (`bearer_ok`,
  constant-time); only processes of this user that can read the run directory (the
  gateway, the watchdog, tests) can send it.
- Identity proof. The gateway's readiness poller sends a fresh random nonce in
  `X-Sentiguard-Challenge` with `GET /ready`; a worker answers its `name` and
  `proof = hex(hmac_sha256(secret, nonce + ":" + name))`. The poller counts a worker as
  ready only when that proof verifies for the name it expects on that port: a foreign
  process on the port, or a worker of another `up`, cannot compute it. The poller sends
  no secret with `/ready`: a process squatting a worker's port would learn it (and with
  it the gateway's control socket).

`/ready` and `/health` stay open: the watchdog and operators probe them without the
secret; only the proof in `/ready` needs it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sentiguard.runtime import control
from sentiguard.runtime.paths import RunDir
from sentiguard.settings import Settings

AUTH_HEADER = "Authorization"
CHALLENGE_HEADER = "X-Sentiguard-Challenge"
_SCHEME = "bearer "
# What a nonce may look like: `new_challenge()` makes 22 URL-safe characters; a worker
# refuses to sign anything else (no header injection, no unbounded input to hash).
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def load_secret(settings: Settings) -> str | None:
    """The per-`up` secret of `settings`' run directory, or None when there is none
    (no file, unreadable, or empty)."""
    try:
        value = control.read_secret(settings)
    except (OSError, UnicodeDecodeError):
        return None
    return value or None


def secret_path(settings: Settings) -> str:
    return str(RunDir(settings).secret)


def bearer_headers(secret: str) -> dict[str, str]:
    return {AUTH_HEADER: f"Bearer {secret}"}


def bearer_ok(header: str | None, secret: str | None) -> bool:
    """Whether an `Authorization` header carries exactly `secret` (constant-time compare).
    Always False for a worker without a secret."""
    if not secret or not header or header[: len(_SCHEME)].lower() != _SCHEME:
        return False
    given = header[len(_SCHEME) :].strip()
    return hmac.compare_digest(given.encode(), secret.encode())


def new_challenge() -> str:
    return secrets.token_urlsafe(16)


def valid_challenge(nonce: str | None) -> bool:
    return nonce is not None and _CHALLENGE.match(nonce) is not None


def proof(secret: str, nonce: str, name: str) -> str:
    """The worker's answer to a challenge: HMAC-SHA256(secret, nonce + ":" + name), hex."""
    return hmac.new(secret.encode(), f"{nonce}:{name}".encode(), hashlib.sha256).hexdigest()


def proof_ok(secret: str | None, nonce: str, name: str, given: object) -> bool:
    """Whether `given` (the `proof` field of a /ready body) proves `name` holds `secret`."""
    if not secret or not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode(), proof(secret, nonce, name).encode())


class Secret:
    """The per-`up` secret as a long-running caller (the gateway) holds it.

    Read on first use, not at construction: a gateway started alone writes the file only
    after building its app. Kept once found; `refresh()` reads the file again (the
    readiness poller calls it when a proof does not verify, so a secret replaced under a
    running gateway is picked up). `Secret.fixed(value)` is one that never changes.
    """

    def __init__(self, settings: Settings | None, value: str | None = None) -> None:
        self._settings = settings
        self._value = value

    @classmethod
    def fixed(cls, value: str) -> Secret:
        return cls(None, value)

    @property
    def path(self) -> str:
        return "(fixed)" if self._settings is None else secret_path(self._settings)

    @property
    def value(self) -> str | None:
        if self._value is None and self._settings is not None:
            self._value = load_secret(self._settings)
        return self._value

    def refresh(self) -> bool:
        """Read the file again; True when the secret changed."""
        if self._settings is None:
            return False
        fresh = load_secret(self._settings)
        if fresh is None or fresh == self._value:
            return False
        self._value = fresh
        return True

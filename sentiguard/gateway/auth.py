"""The API key rule of the public port.

- Bound to loopback, no key is needed (only this host can reach the port).
- Bound beyond loopback, a key is required: without `gateway.api_key` the gateway refuses
  to start (`check_bind`), unless `gateway.allow_public_without_key` says the network is
  private already.
- With a key configured, the API routes (`/analyze`, `/status`, `/metrics`) require it as
  `Authorization: Bearer KEY` or `X-API-Key: KEY`; `/health`, `/ready`, the web UI page and
  its static files stay open, so probes work and the page can ask the user for the key.
"""

from __future__ import annotations

import hmac

from sentiguard.errors import SettingsError, Unauthorized
from sentiguard.settings import Settings
from sentiguard.settings.rules import public_bind_problem


def check_bind(settings: Settings) -> None:
    """Refuse a public bind without a key (the settings rule `load` checks too, repeated
    here because an app can be built from settings loaded with `check=False`)."""
    problem = public_bind_problem(settings.gateway)
    if problem is not None:
        raise SettingsError(str(problem))


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY`, else `X-API-Key`."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return x_api_key


def require_key(expected: str, authorization: str | None, x_api_key: str | None) -> None:
    """Raise `Unauthorized` (401) unless the request carries `expected`; no-op without a key."""
    if not expected:
        return
    given = presented_key(authorization, x_api_key)
    if given is None:
        raise Unauthorized(
            "this endpoint needs the API key: send 'Authorization: Bearer KEY' or "
            "'X-API-Key: KEY'. The operator finds it in gateway.api_key.",
            headers={"WWW-Authenticate": 'Bearer realm="sentiguard"'},
        )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized(
            "the API key is wrong. Check it against gateway.api_key "
            "(env SENTIGUARD_GATEWAY_API_KEY).",
            headers={"WWW-Authenticate": 'Bearer realm="sentiguard", error="invalid_token"'},
        )

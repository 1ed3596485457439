"""The gateway: the only public face of sentiguard.

Where a request goes, module by module: `app.py` (HTTP API, built by `create_app`) ->
`sentiguard/validation.py` (bad input -> one 4xx; the worker uses it too) ->
`routing.py` (a worker from `workers.py` with room under its learnt limit, `limiter.py`,
guarded by `breaker.py`, over `client.py`; else the fallback through `admission.py`).
Beside it: `readiness.py` polls workers, `control_app.py` takes the watchdog's reports on
a unix socket, `state.py` builds /health, /ready and /status, `metrics.py` /metrics, and
`process.py` runs it all under waitress. Every app renders its errors through
`sentiguard/json_errors.py`.
"""

from sentiguard.gateway.app import create_app

__all__ = ["create_app"]

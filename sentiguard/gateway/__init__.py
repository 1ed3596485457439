"""The gateway: the only public face of sentiguard.

Where a request goes, module by module: `app.py` (HTTP API, built by `create_app`) ->
`validation.py` (bad input -> one 4xx) -> `routing.py` (a worker from `workers.py`, guarded
by `breaker.py`, over `client.py`; else the fallback through `admission.py`). Beside it:
`readiness.py` polls workers, `control_app.py` takes the watchdog's reports on a unix
socket, `state.py` builds /health, /ready and /status, `metrics.py` /metrics, and
`server.py` runs it all under waitress.
"""

from sentiguard.gateway.app import create_app

__all__ = ["create_app"]

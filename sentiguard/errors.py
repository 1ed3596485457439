"""One error hierarchy for sentiguard.

Every message says what went wrong and what to do next. HTTP-facing errors carry their
status and a stable `code`; every Flask app renders them through one renderer
(`sentiguard.json_errors`) in one JSON shape: `{"error": {"code": "...", "message": "..."}}`.
"""

from __future__ import annotations

from enum import IntEnum

# The commands that rebuild the committed models, for every message that tells an operator
# to retrain one (both read the shopping corpus, which is not in the repository: README,
# "Models", says where it comes from).
RETRAIN_FALLBACK = "sentiguard train fallback --shopping online_shopping_10_cats.csv"
RETRAIN_PRIMARY = "sentiguard train primary --shopping online_shopping_10_cats.csv"


class ExitCode(IntEnum):
    """Process exit codes a supervisor can tell apart."""

    OK = 0
    ERROR = 1
    USAGE = 2
    # The worker cannot start: its model is missing, corrupt or does not fit. Restarting
    # it will not help; the watchdog parks it instead of hammering it (gunicorn's
    # APP_LOAD_ERROR plays the same role).
    MODEL_LOAD_ERROR = 4
    # `sentiguard up` stopped the service because it could no longer answer: every gateway
    # process FATAL in supervisord at once (none could start, again and again), or the
    # watchdog down past service.watchdog_down_limit_s. A single failing gateway process or
    # watchdog is restarted by `up` with backoff instead (runtime.escalation). The service
    # manager (systemd Restart=on-failure, Docker --restart, Kubernetes) restarts the whole
    # of it. EX_UNAVAILABLE from sysexits.h.
    PROGRAM_FATAL = 69
    CONFIG_ERROR = 78  # EX_CONFIG from sysexits.h


class SentiguardError(Exception):
    """Base of every error sentiguard raises on purpose."""


class SettingsError(SentiguardError):
    """A setting is unknown, of the wrong type or out of range."""


class DataError(SentiguardError):
    """A data file cannot be read as labelled reviews; the message names the line."""


class ModelLoadError(SentiguardError):
    """A model cannot be loaded. `cause` is one of: missing, corrupt, import, memory."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class HTTPError(SentiguardError):
    """An error answered to an HTTP client."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(HTTPError):
    status = 400
    code = "bad_request"


class Unauthorized(HTTPError):
    status = 401
    code = "unauthorized"


class Forbidden(HTTPError):
    status = 403
    code = "forbidden"


class PayloadTooLarge(HTTPError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(HTTPError):
    status = 415
    code = "unsupported_media_type"


class Overloaded(HTTPError):
    status = 503
    code = "overloaded"


class ServiceError(SentiguardError):
    """The service cannot start, or a command cannot reach it; the message says why."""

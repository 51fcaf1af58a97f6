"""The server's error type and JSON error body (no FastAPI needed: the service raises these).

Every error answer is ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status;
the codes are listed in docs/SERVER.md. :mod:`hybridgl.server.middleware` turns these and
the framework's own errors into responses.
"""

from __future__ import annotations

from typing import Any

#: Seconds a client should wait before retrying a 503, by error code.
RETRY_AFTER_S = {"busy": 2, "model_loading": 5, "model_unavailable": 60}


class ApiError(Exception):
    """An error with an HTTP status, a stable machine-readable code and extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        if status == 503 and "Retry-After" not in self.headers:
            self.headers["Retry-After"] = str(RETRY_AFTER_S.get(code, 5))


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of an error answer."""
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    return {"error": body}

"""The server's error type and JSON error body (no FastAPI needed: the service raises these).

Every error answer is ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status;
the codes are listed in docs/SERVER.md. :mod:`hybridgl.server.middleware` turns these and
the framework's own errors into responses.
"""

from __future__ import annotations

from typing import Any

#: Every error code the API answers with, and its one HTTP status: the same condition
#: gets the same code on every endpoint (docs/SERVER.md lists them; a test ties the two).
ERROR_CODES: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "search_disabled": 404,
    "method_not_allowed": 405,
    "image_changed": 410,
    "request_timeout": 408,
    "payload_too_large": 413,
    "image_too_large": 413,
    "video_too_long": 413,
    "volume_too_large": 413,
    "invalid_image": 415,
    "unsupported_media_type": 415,
    "invalid_video": 415,
    "invalid_volume": 415,
    "missing_field": 422,
    "empty_expression": 422,
    "expression_too_long": 422,
    "too_many_expressions": 422,
    "invalid_expressions": 422,
    "invalid_expression": 422,
    "invalid_proposals": 422,
    "invalid_parameter": 422,
    "validation_error": 422,
    "internal_error": 500,
    "busy": 503,
    "model_unavailable": 503,
    "unavailable": 503,
    "index_unavailable": 503,
    "timeout": 504,
}

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
        if ERROR_CODES.get(code) != status:
            raise ValueError(f"API error code {code!r} is not answered with {status}")
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

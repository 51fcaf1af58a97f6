"""Error handlers and ASGI middleware: JSON errors, the body limit and the API key."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hybridgl.server.errors import ApiError, error_body
from hybridgl.server.settings import PUBLIC_PATHS, PUBLIC_PREFIXES

log = logging.getLogger("hybridgl.server")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
    504: "timeout",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


def _loc_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"error": {"code", "message"}}``; tracebacks go to the log."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [
            {"field": _loc_name(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
            for e in errors
        ]
        missing = bool(errors) and all(e.get("type") == "missing" for e in errors)
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
        return error_response(
            422, "missing_field" if missing else "validation_error", message, details=details
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error (see the server log)")


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, without buffering them.

    A declared ``Content-Length`` over the limit is answered at once (after discarding the
    body so that the client reads the answer rather than a reset connection); a streamed
    body that grows past the limit fails the request when it crosses it.
    """

    _DRAIN_CAP = 256 * 1024 * 1024

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        message = f"request body too large (limit {self.limit} bytes)"
        if declared is not None and declared > self.limit:
            if declared <= self._DRAIN_CAP:
                more = True
                while more:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        break
                    more = msg.get("more_body", False)
            response = error_response(413, "payload_too_large", message)
            await response(scope, receive, send)
            return

        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, message)
            return msg

        await self.app(scope, limited_receive, send)


def _boundary(scope: dict) -> bytes | None:
    """The multipart boundary of a ``multipart/form-data`` request, else None."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            kind, _, params = bytes(value).partition(b";")
            if kind.strip().lower() != b"multipart/form-data":
                return None
            for param in params.split(b";"):
                key, _, val = param.strip().partition(b"=")
                if key.strip().lower() == b"boundary":
                    return val.strip().strip(b'"') or None
            return None
    return None


class MultipartFramingMiddleware:
    """Answer 400 when a multipart body ends without its closing boundary.

    The multipart parser silently drops an unterminated last part (a cut-off upload
    would otherwise come back as "image: Field required"); this watches the streamed body
    for the closing delimiter ``--BOUNDARY--`` and fails the request at its end without
    one. Bodies without a boundary at all are refused by the parser itself (also 400).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        boundary = _boundary(scope) if scope["type"] == "http" else None
        if boundary is None:
            await self.app(scope, receive, send)
            return
        closing = b"--" + boundary + b"--"
        tail = b""
        closed = False

        async def framed_receive() -> dict:
            nonlocal tail, closed
            msg = await receive()
            if msg["type"] == "http.request" and not closed:
                window = tail + msg.get("body", b"")
                closed = closing in window
                tail = window[-(len(closing) - 1) :]
                if not closed and not msg.get("more_body", False):
                    raise HTTPException(
                        400,
                        "broken multipart body: it ends without the closing boundary "
                        f"'--{boundary.decode('latin-1')}--' (cut off?)",
                    )
            return msg

        await self.app(scope, framed_receive, send)


def is_public(path: str) -> bool:
    """Whether ``path`` is answered without the API key."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class ApiKeyMiddleware:
    """Require ``Authorization: Bearer <key>`` on every path but the public ones.

    A missing or wrong key gets 401 with ``WWW-Authenticate: Bearer``; keys are compared
    in constant time (:func:`hmac.compare_digest`).
    """

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode("utf-8")

    def _authorized(self, scope: dict) -> tuple[bool, bool]:
        """(authorized, a credential was offered)."""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = bytes(value).strip().partition(b" ")
                if scheme.lower() != b"bearer":
                    return False, True
                return hmac.compare_digest(token.strip(), self._key), True
        return False, False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or is_public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        ok, offered = self._authorized(scope)
        if ok:
            await self.app(scope, receive, send)
            return
        challenge = 'Bearer realm="hybridgl"'
        if offered:
            challenge += ', error="invalid_token"'
            message = "the API key is wrong (send 'Authorization: Bearer <key>')"
        else:
            message = "this server needs an API key: send 'Authorization: Bearer <key>'"
        response = error_response(
            401, "unauthorized", message, headers={"WWW-Authenticate": challenge}
        )
        await response(scope, receive, send)

"""HTTP API and web demo for :class:`hybridgl.Segmenter` (FastAPI).

Endpoints:
    ``POST /v1/segment``: an image and one or more referring expressions -> masks (COCO RLE),
    polygons, boxes, scores, candidates and the parse; or a PNG mask / overlay.
    ``GET /health``, ``GET /v1/models``; the web page at ``/``; OpenAPI docs at ``/docs``.

Design:
    * Model work runs on one dedicated worker thread (a single-worker executor plus a lock),
      so requests never interleave inside the model and the event loop never blocks on it.
      Decoding, hashing and response encoding run in the ordinary threadpool.
    * Per-image work (SAM proposals, CLIP image features) is kept in a bounded LRU cache of
      ``ImageState`` keyed by the SHA-256 of the uploaded bytes; a second phrase on the same
      image only runs the text side. Responses say whether the cache was hit.
    * Every limit is a field of :class:`ServerSettings`. Bad input gets a 4xx JSON body
      ``{"error": {"code": ..., "message": ...}}``; never a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hybridgl.server.cache import LRUCache, sha256_hex

log = logging.getLogger("hybridgl.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Room for the multipart framing and the text fields on top of the image itself.
_FORM_OVERHEAD_BYTES = 256 * 1024


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    """Limits and defaults of the HTTP server (each has a ``hybridgl serve`` flag).

    Attributes:
        max_upload_bytes: largest accepted image file, in bytes (413 above).
        max_pixels: largest accepted image, width x height after decoding (413 above).
        max_expressions: most expressions in one request (422 above).
        max_expression_chars: longest accepted expression, in characters (422 above).
        request_timeout_s: longest a request may wait for and use the model (504 after).
        max_queue: most requests waiting for or using the model at once (503 above).
        cache_size: how many images' proposals and features are kept (LRU; 0 disables).
        cache_max_bytes: memory bound of that cache in bytes (masks dominate: N x H x W).
        top_k: default number of ranked candidates returned per expression.
        max_top_k: largest ``top_k`` a client may ask for.
        guidance: default for spatial guidance (clients may override per request).
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_expressions: int = 16
    max_expression_chars: int = 500
    request_timeout_s: float = 120.0
    max_queue: int = 32
    cache_size: int = 8
    cache_max_bytes: int = 2 * 1024**3
    top_k: int = 3
    max_top_k: int = 20
    guidance: bool = True

    def __post_init__(self) -> None:
        for name in (
            "max_upload_bytes",
            "max_pixels",
            "max_expressions",
            "max_expression_chars",
            "max_queue",
            "top_k",
            "max_top_k",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cache_max_bytes < 1:
            raise ValueError(f"cache_max_bytes must be >= 1, got {self.cache_max_bytes}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.top_k > self.max_top_k:
            raise ValueError(f"top_k ({self.top_k}) must not exceed max_top_k ({self.max_top_k})")

    def limits(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    return JSONResponse({"error": body}, status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
    504: "timeout",
}


def _loc_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

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


class _BodyLimitMiddleware:
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


# --------------------------------------------------------------------------- helpers


def _num(x: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf/None)."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return str(obj)


def _copy_counter(counter: Any) -> dict[str, int]:
    for _ in range(5):  # the model thread may be incrementing it
        try:
            return {str(k): int(v) for k, v in dict(counter).items()}
        except RuntimeError:
            continue
    return {}


def _parse_expressions(
    expression: list[str] | None, expressions: str | None, settings: ServerSettings
) -> list[str]:
    items: list[Any] = list(expression or [])
    if expressions is not None and expressions.strip():
        try:
            parsed = json.loads(expressions)
        except json.JSONDecodeError as e:
            raise ApiError(
                422, "invalid_expressions", f"'expressions' must be a JSON list of strings: {e}"
            ) from None
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise ApiError(
                422, "invalid_expressions", "'expressions' must be a JSON list of strings"
            )
        items.extend(parsed)
    if not items:
        raise ApiError(
            422,
            "missing_field",
            "expression: give at least one 'expression' field (or 'expressions' as a JSON list)",
        )
    if len(items) > settings.max_expressions:
        raise ApiError(
            422,
            "too_many_expressions",
            f"{len(items)} expressions given; at most {settings.max_expressions} per request",
        )
    out = []
    for i, text in enumerate(items):
        text = " ".join(str(text).split())
        if not text:
            raise ApiError(422, "empty_expression", f"expression {i} is empty")
        if len(text) > settings.max_expression_chars:
            raise ApiError(
                422,
                "expression_too_long",
                f"expression {i} has {len(text)} characters; "
                f"at most {settings.max_expression_chars} allowed",
            )
        out.append(text)
    return out


def _check_image(data: bytes, settings: ServerSettings) -> tuple[int, int]:
    """Validate an upload cheaply (header only); return (width, height)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(415, "invalid_image", "the image file is empty")
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"image is {len(data)} bytes; the limit is {settings.max_upload_bytes} bytes",
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except UnidentifiedImageError:
        raise ApiError(
            415, "invalid_image", "the upload is not an image in a readable format (JPEG, PNG, ...)"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(415, "invalid_image", f"not a readable image: {e}") from None
    if width * height > settings.max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"image is {width}x{height} = {width * height} pixels; "
            f"the limit is {settings.max_pixels} pixels",
        )
    return width, height


def _decode_image(data: bytes) -> np.ndarray:
    from hybridgl.errors import ImageError
    from hybridgl.images import load_image

    try:
        return load_image(data)
    except ImageError as e:
        raise ApiError(415, "invalid_image", str(e)) from None


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- service


@dataclass
class _Outcome:
    state: Any
    predictions: list[Any]
    cache_hit: bool
    timings: dict[str, float]


class SegmentService:
    """Owns the segmenter, the image cache and the single model worker thread."""

    def __init__(self, segmenter: Any, factory: Callable[[], Any] | None, settings: ServerSettings):
        self.settings = settings
        self._segmenter = segmenter
        self._factory = factory
        self.load_error: str | None = None
        self.cache: LRUCache[Any] = LRUCache(
            settings.cache_size, max_bytes=settings.cache_max_bytes
        )
        self.model_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.started_at = time.time()

    # lifecycle ---------------------------------------------------------------
    @property
    def segmenter(self) -> Any:
        return self._segmenter

    @property
    def ready(self) -> bool:
        return self._segmenter is not None

    def start(self) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="hybridgl-model"
            )

    def load(self) -> None:
        """Build the segmenter from the factory (if not given ready-made)."""
        if self._segmenter is not None or self._factory is None:
            return
        try:
            self._segmenter = self._factory()
        except Exception as e:  # reported by /health and every request
            log.error("could not load the model: %s", e)
            self.load_error = f"{type(e).__name__}: {e}"

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def pending(self) -> int:
        with self._pending_lock:
            return self._pending

    # model work --------------------------------------------------------------
    def _require_model(self) -> Any:
        if self._segmenter is None:
            reason = self.load_error or "the model is still loading"
            raise ApiError(503, "model_unavailable", reason)
        return self._segmenter

    async def run_model(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread, bounded by the queue limit and the timeout."""
        self._require_model()
        self.start()
        assert self._executor is not None
        with self._pending_lock:
            if self._pending >= self.settings.max_queue:
                raise ApiError(
                    503,
                    "busy",
                    f"server busy: {self._pending} requests in progress; try again shortly",
                )
            self._pending += 1

        def _done(_: concurrent.futures.Future) -> None:
            with self._pending_lock:
                self._pending -= 1

        cfut = self._executor.submit(fn)
        cfut.add_done_callback(_done)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(cfut), timeout=self.settings.request_timeout_s
            )
        except (asyncio.TimeoutError, TimeoutError):
            cfut.cancel()  # drops it if it has not started yet
            raise ApiError(
                504,
                "timeout",
                f"request took longer than {self.settings.request_timeout_s:g} s",
            ) from None

    def segment_job(
        self,
        sha: str,
        data: bytes,
        image: np.ndarray | None,
        expressions: list[str],
        top_k: int,
        guidance: bool,
    ) -> _Outcome:
        """Body of one request on the model thread: cached or fresh ImageState, then predict."""
        from hybridgl.errors import ExpressionError, ImageError

        seg = self._require_model()
        timings: dict[str, float] = {}
        with self.model_lock:
            t0 = time.perf_counter()
            state = self.cache.get(sha)
            hit = state is not None
            try:
                if state is not None:
                    seg.set_image_state(state)
                else:
                    if image is None:
                        image = _decode_image(data)
                    state = seg.set_image(image)
                    self.cache.put(sha, state)
                t1 = time.perf_counter()
                predictions = seg.predict_many(expressions, top_k=top_k, guidance=guidance)
                t2 = time.perf_counter()
            except ImageError as e:
                raise ApiError(415, "invalid_image", str(e)) from None
            except ExpressionError as e:
                raise ApiError(422, "invalid_expression", str(e)) from None
        timings["image_ms"] = (t1 - t0) * 1000.0
        timings["predict_ms"] = (t2 - t1) * 1000.0
        return _Outcome(state, list(predictions), hit, timings)

    # info --------------------------------------------------------------------
    def model_info(self) -> dict[str, Any]:
        seg = self._segmenter
        if seg is None:
            return {}
        info = getattr(seg, "model_info", None)
        return _jsonable(dict(info)) if info else {}

    def stats(self) -> dict[str, int]:
        seg = self._segmenter
        return _copy_counter(getattr(seg, "stats", {})) if seg is not None else {}


# --------------------------------------------------------------------------- encoding


def _candidate_record(cand: Any, state: Any, with_mask: bool) -> dict[str, Any]:
    from hybridgl.masks import mask_to_rle

    rec = {k: _jsonable(v) for k, v in cand.to_dict().items()}
    idx = int(cand.index)
    boxes = getattr(state, "boxes", None)
    if boxes is not None and 0 <= idx < len(boxes):
        rec["box"] = [_num(v) for v in boxes[idx]]
    if with_mask:
        rec["rle"] = mask_to_rle(np.asarray(state.masks[idx], dtype=bool))
    return rec


def prediction_json(
    pred: Any,
    expression: str,
    state: Any,
    *,
    candidate_masks: bool = False,
    polygons: bool = True,
) -> dict[str, Any]:
    """JSON record of one prediction: the CLI's record plus candidate boxes and timings.

    Keys: ``expression``, ``found``, ``score``, ``box`` (XYWH), ``area``, ``height``,
    ``width``, ``rle`` (COCO compressed), ``polygons`` (unless turned off), ``index``,
    ``pure_index``, ``num_proposals``, ``candidates`` (each with its proposal ``box`` and,
    with ``candidate_masks``, its ``rle``), ``parse`` and ``timings``.
    """
    from hybridgl.masks import prediction_record

    rec = _jsonable(prediction_record(pred, expression, include_polygons=polygons))
    rec["candidates"] = [_candidate_record(c, state, candidate_masks) for c in pred.candidates]
    # the library reports seconds; the API reports milliseconds throughout
    rec["timings"] = {
        f"{name}_ms": _num(float(value) * 1000.0) for name, value in dict(pred.timings).items()
    }
    return rec


# --------------------------------------------------------------------------- app


SegmenterArg = Any  # a Segmenter (or anything with its interface), or a zero-argument factory


def _is_segmenter(obj: Any) -> bool:
    return hasattr(obj, "predict_many") and hasattr(obj, "set_image")


def create_app(
    segmenter_factory: SegmenterArg | None = None,
    settings: ServerSettings | None = None,
) -> FastAPI:
    """Build the FastAPI application.

    Args:
        segmenter_factory: a ready :class:`hybridgl.Segmenter`, or a zero-argument callable
            returning one (called once at start-up on a worker thread), or None to build
            ``Segmenter.from_pretrained()`` with its defaults.
        settings: limits and defaults; :class:`ServerSettings` defaults when None.

    Returns:
        The app; run it with ``uvicorn`` (``hybridgl serve`` does that).
    """
    settings = settings or ServerSettings()
    if segmenter_factory is None:

        def segmenter_factory() -> Any:
            from hybridgl import Segmenter

            return Segmenter.from_pretrained()

    if _is_segmenter(segmenter_factory):
        service = SegmentService(segmenter_factory, None, settings)
    elif callable(segmenter_factory):
        service = SegmentService(None, segmenter_factory, settings)
    else:
        raise TypeError("segmenter_factory must be a Segmenter, a callable returning one, or None")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        await run_in_threadpool(service.load)
        try:
            yield
        finally:
            service.close()

    from hybridgl import __version__

    app = FastAPI(
        title="hybridgl",
        version=__version__,
        summary="Zero-shot referring image segmentation (HybridGL): phrase in, mask out.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    _install_error_handlers(app)
    app.add_middleware(_BodyLimitMiddleware, limit=settings.max_upload_bytes + _FORM_OVERHEAD_BYTES)

    # pages ---------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    # info ----------------------------------------------------------------------
    @app.get("/health", summary="Liveness and readiness")
    async def health() -> JSONResponse:
        if service.ready:
            status = "ok"
        elif service.load_error:
            status = "error"
        else:
            status = "loading"
        body = {
            "status": status,
            "model_loaded": service.ready,
            "error": service.load_error,
            "version": __version__,
            "uptime_s": round(time.time() - service.started_at, 3),
            "queue": {"pending": service.pending, "max": settings.max_queue},
            "cache": service.cache.info(),
        }
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/v1/models", summary="The loaded model, its preset and the server limits")
    async def models() -> dict[str, Any]:
        info = service.model_info()
        return {
            "model": info,
            "ready": service.ready,
            "random_weights": bool(info.get("random_weights", False)),
            "device": info.get("device"),
            "preset": info.get("preset"),
            "defaults": {"top_k": settings.top_k, "guidance": settings.guidance},
            "limits": settings.limits(),
            "stats": service.stats(),
        }

    # segmentation --------------------------------------------------------------
    @app.post(
        "/v1/segment",
        summary="Segment the object each expression refers to",
        responses={
            200: {
                "description": "JSON results, or a PNG when format=png_mask|png_overlay",
                "content": {"image/png": {}},
            },
            413: {"description": "upload or image too large"},
            415: {"description": "not a readable image"},
            422: {"description": "missing, empty, too long or too many expressions"},
            503: {"description": "model unavailable or server busy"},
            504: {"description": "request timed out"},
        },
    )
    async def segment(
        image: Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, ...)")],
        expression: Annotated[
            list[str] | None,
            Form(description="a referring expression; repeat the field for several"),
        ] = None,
        expressions: Annotated[
            str | None, Form(description='alternative: a JSON list of strings, ["a", "b"]')
        ] = None,
        format: Annotated[
            Literal["json", "png_mask", "png_overlay"],
            Query(description="json, or a PNG of the first expression's mask / overlay"),
        ] = "json",
        top_k: Annotated[
            int | None, Query(ge=1, description="candidates per expression (default: server's)")
        ] = None,
        guidance: Annotated[
            bool | None, Query(description="spatial guidance on/off (default: server's)")
        ] = None,
        candidate_masks: Annotated[
            bool, Query(description="include each candidate's mask as RLE")
        ] = False,
        polygons: Annotated[bool, Query(description="include polygons of the chosen mask")] = True,
    ) -> Response:
        t_start = time.perf_counter()
        exprs = _parse_expressions(expression, expressions, settings)
        k = settings.top_k if top_k is None else top_k
        if k > settings.max_top_k:
            raise ApiError(422, "invalid_parameter", f"top_k must be <= {settings.max_top_k}")
        use_guidance = settings.guidance if guidance is None else guidance
        data = await image.read()
        await image.close()

        def prepare() -> tuple[str, np.ndarray | None, tuple[int, int]]:
            sha = sha256_hex(data)
            size = _check_image(data, settings)
            decoded = None if sha in service.cache else _decode_image(data)
            return sha, decoded, size

        service._require_model()
        sha, decoded, _ = await run_in_threadpool(prepare)
        t_prepared = time.perf_counter()
        outcome: _Outcome = await service.run_model(
            lambda: service.segment_job(sha, data, decoded, exprs, k, use_guidance)
        )
        t_model = time.perf_counter()
        state = outcome.state
        first = outcome.predictions[0]
        headers = {
            "X-Image-SHA256": sha,
            "X-Cache-Hit": "true" if outcome.cache_hit else "false",
            "X-Found": "true" if first.found else "false",
            "X-Score": f"{_num(first.score) or 0.0:.6g}",
        }
        if format == "png_mask":
            from hybridgl.masks import mask_to_png_bytes

            png = await run_in_threadpool(mask_to_png_bytes, np.asarray(first.mask, dtype=bool))
            return Response(png, media_type="image/png", headers=headers)
        if format == "png_overlay":
            from hybridgl.viz import overlay

            def render() -> bytes:
                box = tuple(first.box) if first.found else None
                return _png_bytes(overlay(state.image, first.mask, box=box, label=exprs[0]))

            png = await run_in_threadpool(render)
            return Response(png, media_type="image/png", headers=headers)

        def encode() -> list[dict[str, Any]]:
            return [
                prediction_json(p, e, state, candidate_masks=candidate_masks, polygons=polygons)
                for p, e in zip(outcome.predictions, exprs, strict=True)
            ]

        results = await run_in_threadpool(encode)
        t_end = time.perf_counter()
        timings = {
            "prepare_ms": (t_prepared - t_start) * 1000.0,
            "model_ms": (t_model - t_prepared) * 1000.0,
            **outcome.timings,
            "encode_ms": (t_end - t_model) * 1000.0,
            "total_ms": (t_end - t_start) * 1000.0,
        }
        body = {
            "image": {
                "sha256": sha,
                "width": int(state.width),
                "height": int(state.height),
                "num_proposals": int(state.num_proposals),
            },
            "cache_hit": outcome.cache_hit,
            "top_k": k,
            "guidance": use_guidance,
            "results": results,
            "timings": {name: round(v, 3) for name, v in timings.items()},
        }
        return JSONResponse(body, headers=headers)

    return app


# --------------------------------------------------------------------------- threaded runner


class BackgroundServer:
    """Run an ASGI app with uvicorn on a background thread (tests, notebooks).

    Binds ``host:port`` (``port=0`` picks a free port); :attr:`url` is the base URL once
    started. Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

"""The app factory: settings + model service + middleware + route modules.

The pieces live in their own modules: :mod:`~hybridgl.server.settings` (every limit and
option), :mod:`~hybridgl.server.service` (the segmenter, cache and bounds; no FastAPI),
:mod:`~hybridgl.server.inputs` (checking requests), :mod:`~hybridgl.server.encoding`
(responses), :mod:`~hybridgl.server.middleware` (errors, body limit, API key),
:mod:`~hybridgl.server.protocol` (uvicorn with a read timeout) and
:mod:`hybridgl.server.routes` (one module per group of endpoints).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from hybridgl.server.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    MultipartFramingMiddleware,
    install_error_handlers,
)
from hybridgl.server.routes import info, pages, search, segment, track, volume
from hybridgl.server.service import ModelService
from hybridgl.server.settings import ServerSettings

#: The route modules every app serves, in order (each has ``include(app)``).
ROUTE_MODULES: tuple[ModuleType, ...] = (pages, info, segment, search, track, volume)

# Room for the multipart framing and the text fields on top of the image itself.
FORM_OVERHEAD_BYTES = 256 * 1024


def create_app(
    segmenter: Any = None,
    settings: ServerSettings | None = None,
    *,
    routes: Sequence[ModuleType] = (),
) -> FastAPI:
    """Build the FastAPI application.

    Args:
        segmenter: a ready :class:`hybridgl.Segmenter` (or anything with its
            explicit-state API), a zero-argument callable returning one (called once at
            start-up on a worker thread; ``/health`` says ``loading`` until it returns), or
            None for ``Segmenter.from_pretrained()``.
        settings: limits and defaults; :class:`ServerSettings` defaults when None.
        routes: extra route modules (each with ``include(app)``) after :data:`ROUTE_MODULES`.

    Returns:
        The app; ``app.state.service`` is its :class:`ModelService`. Run it with
        ``hybridgl serve`` or :func:`hybridgl.server.protocol.uvicorn_config`.
    """
    from hybridgl import __version__

    settings = settings or ServerSettings()
    if segmenter is None:

        def segmenter() -> Any:
            from hybridgl import Segmenter

            return Segmenter.from_pretrained()

    service = ModelService(segmenter, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        await run_in_threadpool(service.load)
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="hybridgl",
        version=__version__,
        summary="Zero-shot referring image segmentation (HybridGL): phrase in, mask out.",
        lifespan=lifespan,
        # the Swagger UI and ReDoc pages load their scripts from a CDN: not offline, so
        # they are off; the OpenAPI schema stays at /openapi.json
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(MultipartFramingMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes + FORM_OVERHEAD_BYTES)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)  # outermost: first
    for module in (*ROUTE_MODULES, *routes):
        module.include(app)
    return app

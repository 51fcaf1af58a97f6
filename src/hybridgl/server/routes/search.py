"""``POST /v1/search`` and ``GET /v1/search/images/{image_id}``: collection search.

Served when ``hybridgl serve --db DB`` names an index built by ``hybridgl index`` (checked
against the server's model at start-up); otherwise both answer 404 ``search_disabled``.
A search runs on the model thread like every segmenter call: the phrase's text side,
stage 1 over every stored proposal, stage 2 (the full method) on the best images.
"""

from __future__ import annotations

import json
import math
import mimetypes
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from hybridgl.server.errors import ApiError
from hybridgl.server.routes import Service, Settings
from hybridgl.server.targets import target_options

MAX_HITS = 200
_IMAGE_ID = re.compile(r"^[0-9a-f]{20}$")


class SearchRequest(BaseModel):
    """The JSON body of ``POST /v1/search``."""

    expression: str = Field(description="the referring expression to look for")
    top: int = Field(20, ge=1, le=MAX_HITS, description="most hits to return")
    rerank: int | None = Field(
        None, ge=1, le=MAX_HITS, description="images re-scored with the full method (default: top)"
    )
    min_score: float | None = Field(None, description="drop hits whose cosine score is lower")
    top_k: int | None = Field(None, ge=1, description="candidates per hit (default: server's)")
    guidance: bool | None = Field(None, description="spatial guidance (default: server's)")
    candidate_masks: bool = Field(False, description="include each candidate's mask as RLE")
    targets: str | None = Field(
        None,
        description="one (default), many or auto (docs/TARGETS.md): with many/auto, images where "
        "the phrase has no target are dropped and counted in no_target",
    )
    thresholds: dict[str, Any] | None = Field(
        None, description="target-rule thresholds (hybridgl calibrate's rules)"
    )


def _index(request: Request, settings: Any, service: Any) -> Any:
    """The app's :class:`hybridgl.search.Index` on the server's segmenter (built once)."""
    if not settings.search_db:
        raise ApiError(
            404, "search_disabled", "this server has no search index (start it with --db DB)"
        )
    idx = getattr(request.app.state, "search_index", None)
    if idx is None:
        from hybridgl.search import Index

        idx = Index(settings.search_db, segmenter=service.require_model())
        request.app.state.search_index = idx
    return idx


def include(app: FastAPI) -> None:
    @app.post(
        "/v1/search",
        summary="Find the indexed images, and the region in each, that a phrase describes",
        responses={
            404: {"description": "the server was started without --db"},
            422: {"description": "empty or too long expression; bad parameters"},
            503: {"description": "model or index unavailable, or server busy"},
        },
    )
    async def search(
        body: SearchRequest, request: Request, service: Service, settings: Settings
    ) -> JSONResponse:
        from hybridgl.errors import ExpressionError
        from hybridgl.search import IndexStoreError

        t0 = time.perf_counter()
        expression = body.expression
        if not expression.strip():
            raise ApiError(422, "empty_expression", "expression is empty")
        if len(expression) > settings.max_expression_chars:
            raise ApiError(
                422,
                "expression_too_long",
                f"expression is {len(expression)} characters; the limit is "
                f"{settings.max_expression_chars}",
            )
        if body.min_score is not None and not math.isfinite(body.min_score):
            raise ApiError(422, "invalid_parameter", "min_score must be a finite number")
        top_k = body.top_k or settings.top_k
        if top_k > settings.max_top_k:
            raise ApiError(422, "invalid_parameter", f"top_k must be <= {settings.max_top_k}")
        guidance = settings.guidance if body.guidance is None else body.guidance
        options = target_options(
            body.targets,
            None if body.thresholds is None else json.dumps(body.thresholds),
            settings.thresholds,
        )
        idx = _index(request, settings, service)
        ticket = service.admit()
        try:

            def job() -> dict[str, Any]:
                hits = idx.search(
                    expression,
                    top=body.top,
                    rerank=body.rerank,
                    min_score=body.min_score,
                    top_k=top_k,
                    guidance=guidance,
                    **options,
                )
                info = hits.info()
                out = []
                for h in hits:
                    d = h.to_dict(candidate_masks=body.candidate_masks)
                    d["name"] = d.pop("path").replace("\\", "/").rsplit("/", 1)[-1]
                    d["image_url"] = f"/v1/search/images/{h.image_id}"
                    out.append(d)
                return {
                    "expression": expression,
                    "parse": info.get("parse"),
                    "similarity": "cosine of the phrase with the chosen region (comparable "
                    "across images)",
                    "reranked": info.get("reranked"),
                    "no_target": info.get("no_target", 0),
                    "hits": out,
                    "timings": {
                        k + "_ms": round(v * 1000.0, 3) for k, v in info.get("timings", {}).items()
                    },
                }

            try:
                result = await service.run_on_model(ticket, job)
            except ExpressionError as e:
                raise ApiError(422, "invalid_expression", str(e)) from None
            except IndexStoreError as e:
                raise ApiError(
                    503, "index_unavailable", str(e), headers={"Retry-After": "60"}
                ) from None
        finally:
            ticket.release()
        result["timings"]["request_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
        return JSONResponse(result)

    @app.get(
        "/v1/search/images/{image_id}",
        summary="An indexed image file (for the page's result grid)",
        responses={
            404: {"description": "no such image in the index, no index, or the file is gone"},
            410: {"description": "the file changed since it was indexed"},
        },
    )
    async def search_image(
        image_id: str, request: Request, service: Service, settings: Settings
    ) -> Response:
        from hybridgl.search import IndexStoreError
        from hybridgl.search.files import (
            IndexedFileChanged,
            IndexedFileGone,
            read_indexed_file,
        )

        if not _IMAGE_ID.match(image_id):
            raise ApiError(404, "not_found", "no such image in the index")
        idx = _index(request, settings, service)
        ticket = service.admit()
        try:
            try:
                row = await service.run_on_model(ticket, lambda: idx.image_record(image_id))
            except IndexStoreError as e:
                raise ApiError(503, "index_unavailable", str(e)) from None
            if row is None:
                raise ApiError(404, "not_found", "no such image in the index")
            try:
                # the bytes that were indexed, or nothing: never what the path holds now
                data = await run_in_threadpool(
                    read_indexed_file,
                    row["path"],
                    sha256=row["sha256"],
                    size=row["size"],
                    roots=row["roots"],
                )
            except IndexedFileChanged:
                raise ApiError(
                    410, "image_changed", "the image file changed since it was indexed"
                ) from None
            except IndexedFileGone:
                raise ApiError(404, "not_found", "the indexed image file is gone") from None
        finally:
            ticket.release()
        media = mimetypes.guess_type(row["path"])[0] or "application/octet-stream"
        return Response(
            data,
            media_type=media,
            headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

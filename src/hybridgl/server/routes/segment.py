"""``POST /v1/segment``: an image and referring expressions in, masks (or a PNG) out."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from hybridgl.server import encoding
from hybridgl.server.inputs import (
    check_top_k,
    parse_expressions,
    proposals_builder,
)
from hybridgl.server.routes import Service, Settings
from hybridgl.server.service import Outcome, proposals_digest
from hybridgl.server.targets import target_options

RESPONSES: dict[int | str, dict] = {
    200: {
        "description": "JSON results, or a PNG when format=png_mask|png_overlay",
        "content": {"image/png": {}},
    },
    400: {"description": "the body is not valid multipart/form-data"},
    401: {"description": "the server needs an API key and none or a wrong one was sent"},
    413: {"description": "upload or image too large"},
    415: {"description": "not a readable image"},
    422: {
        "description": "missing, empty, too long or too many expressions; bad proposals; "
        "bad parameters"
    },
    503: {"description": "model unavailable or server busy (see Retry-After)"},
    504: {"description": "request timed out"},
}


def include(app: FastAPI) -> None:
    @app.post(
        "/v1/segment",
        summary="Segment the object each expression refers to",
        responses=RESPONSES,
    )
    async def segment(
        service: Service,
        settings: Settings,
        image: Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, ...)")],
        expression: Annotated[
            list[str] | None,
            Form(description="a referring expression; repeat the field for several"),
        ] = None,
        expressions: Annotated[
            str | None, Form(description='alternative: a JSON list of strings, ["a", "b"]')
        ] = None,
        proposals: Annotated[
            UploadFile | str | None,
            File(
                description="optional caller proposals replacing SAM: an (N, H, W) .npy array "
                "or a JSON list of COCO RLEs at the image's size"
            ),
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
        targets: Annotated[
            str | None,
            Query(
                description="one (default: the method's single answer), many (every object "
                "the phrase selects, or none) or auto (several when the phrase names several); "
                "docs/TARGETS.md"
            ),
        ] = None,
        thresholds: Annotated[
            str | None,
            Query(description="JSON object of target-rule thresholds (hybridgl calibrate)"),
        ] = None,
    ) -> Response:
        t_start = time.perf_counter()
        exprs = parse_expressions(expression, expressions, settings)
        k = check_top_k(top_k, settings)
        # 422 before any upload is read
        options = target_options(targets, thresholds, settings.thresholds)
        use_guidance = settings.guidance if guidance is None else guidance
        ticket = service.admit()  # 503 when the queue is full
        try:
            data = await image.read()  # only now: admitted uploads bound the memory held
            await image.close()
            upload = await service.inspect(ticket, data)  # on an image thread
            builder, proposals_key = None, ""
            if proposals is not None:
                if isinstance(proposals, str):
                    part = proposals.encode("utf-8")
                else:
                    part = await proposals.read()
                    await proposals.close()
                builder = proposals_builder(part, settings)
                proposals_key = proposals_digest(part)
            t_checked = time.perf_counter()

            def render(outcome: Outcome) -> Response:
                # on one of the service's answer threads, right after the prediction
                t_model = time.perf_counter()
                headers = encoding.result_headers(outcome)
                if format == "png_mask":
                    png = encoding.mask_png(outcome)
                    return Response(png, media_type="image/png", headers=headers)
                if format == "png_overlay":
                    png = encoding.overlay_png(outcome, exprs[0])
                    return Response(png, media_type="image/png", headers=headers)
                timings = {
                    "prepare_ms": (t_checked - t_start) * 1000.0,
                    "model_ms": (t_model - t_checked) * 1000.0,
                    "image_ms": outcome.timings["image_ms"],
                    "predict_ms": outcome.timings["predict_ms"],
                }
                body = encoding.segment_body(
                    outcome,
                    top_k=k,
                    guidance=use_guidance,
                    candidate_masks=candidate_masks,
                    polygons=polygons,
                    timings=timings,
                )
                t_done = time.perf_counter()
                body["timings"]["encode_ms"] = round((t_done - t_model) * 1000.0, 3)
                body["timings"]["total_ms"] = round((t_done - t_start) * 1000.0, 3)
                return JSONResponse(body, headers=headers)

            response: Response = await service.segment(
                ticket,
                upload,
                exprs,
                top_k=k,
                guidance=use_guidance,
                proposals=builder,
                proposals_key=proposals_key,
                render=render,
                options=options,
            )
            return response
        finally:
            ticket.release()

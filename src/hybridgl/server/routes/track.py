"""``POST /v1/track``: a short clip and phrases in, per-frame records (or the overlay) out.

The clip is tracked with :class:`hybridgl.video.method.VideoSegmenter` (the server's
segmenter and a video tracker, ``sam2.1_hiera_tiny`` unless the app's ``state.tracker_name``
says otherwise) on the model thread, inside the admission queue and the request deadline of
the image path. Limits (docs/VIDEO.md, "Server"): the upload size and the pixel cap of the
image path (checked from the container header before decoding), at most :data:`MAX_FRAMES`
frames after the stride and :data:`MAX_SECONDS` seconds of video. Frames are decoded one at
a time; the answer holds RLE masks only.
"""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from hybridgl.server.errors import ApiError
from hybridgl.server.inputs import parse_expressions, too_large
from hybridgl.server.routes import Service, Settings
from hybridgl.server.targets import target_options
from hybridgl.video.sources import VIDEO_EXTENSIONS

MAX_FRAMES = 300
"""Most frames one request may track (after the stride)."""
MAX_SECONDS = 60.0
"""Longest clip accepted, by the duration its container declares."""
DEFAULT_TRACKER = "sam2.1_hiera_tiny"

RESPONSES: dict[int | str, dict] = {
    200: {
        "description": "JSON records, or the overlay video when format=mp4",
        "content": {"video/mp4": {}},
    },  # fmt: skip
    413: {"description": "upload too large, frames too large, or clip too long"},
    415: {"description": "not a readable video"},
    422: {"description": "missing or bad expressions or parameters"},
    503: {"description": "model unavailable or server busy (see Retry-After)"},
    504: {"description": "request timed out"},
}


def _tracker(app: Any, segmenter: Any) -> Any:
    """The app's tracker, built on first use on the model thread (one session at a time)."""
    tracker = getattr(app.state, "tracker", None)
    if tracker is None:
        from hybridgl.video.hf_trackers import build_tracker

        name = getattr(app.state, "tracker_name", None) or DEFAULT_TRACKER
        try:
            tracker = build_tracker(
                name,
                device=getattr(segmenter, "device", None),
                dtype=getattr(segmenter, "dtype", None),
            )
        except ImportError as e:
            raise ApiError(503, "model_unavailable", str(e)) from None
        app.state.tracker = tracker
    return tracker


def include(app: FastAPI) -> None:
    @app.post("/v1/track", summary="Follow each phrase through a short clip", responses=RESPONSES)
    async def track(
        request: Request,
        service: Service,
        settings: Settings,
        video: Annotated[UploadFile, File(description="the clip (mp4, webm, mkv, avi, mov)")],
        expression: Annotated[
            list[str] | None, Form(description="a phrase; repeat the field for several")
        ] = None,
        expressions: Annotated[
            str | None, Form(description='alternative: a JSON list of strings, ["a", "b"]')
        ] = None,
        format: Annotated[
            Literal["json", "mp4"], Query(description="json records, or the overlay video")
        ] = "json",
        overlay: Annotated[
            Literal["none", "mp4", "webm"],
            Query(description="with format=json: add the overlay video, base64 (overlay_video)"),
        ] = "none",
        reground_every: Annotated[int, Query(ge=0, description="0: never")] = 15,
        stride: Annotated[int, Query(ge=1)] = 1,
        max_frames: Annotated[int | None, Query(ge=1, le=MAX_FRAMES)] = None,
        targets: Annotated[
            str | None,
            Query(
                description="one (default), many or auto: with many/auto one tracked object "
                "per target the method finds on the keyframe (docs/TARGETS.md)"
            ),
        ] = None,
        thresholds: Annotated[
            str | None,
            Query(description="JSON object of target-rule thresholds (hybridgl calibrate)"),
        ] = None,
    ) -> Response:
        t_start = time.perf_counter()
        exprs = parse_expressions(expression, expressions, settings)
        # 422 before the upload is read; the server's --thresholds when the request has none
        target = target_options(targets, thresholds, settings.thresholds)
        ticket = service.admit()  # 503 when the queue is full
        try:
            data = await video.read()
            await video.close()
            if not data:
                raise ApiError(415, "invalid_video", "the video upload is empty")
            if len(data) > settings.max_upload_bytes:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"video is {len(data)} bytes; the limit is {settings.max_upload_bytes} bytes",
                )
            suffix = Path(video.filename or "").suffix.lower()
            seg = service.require_model()

            def work() -> Response:
                with tempfile.TemporaryDirectory(prefix="hybridgl-track-") as tmp:
                    path = Path(tmp) / f"clip{suffix if suffix in VIDEO_EXTENSIONS else ''}"
                    path.write_bytes(data)
                    return _run(request, settings, seg, path, exprs, format, overlay,
                                reground_every, stride, max_frames, t_start,
                                target)  # fmt: skip

            response: Response = await service.run_on_model(ticket, work)
            return response
        finally:
            ticket.release()


def _run(
    request: Request,
    settings: Any,
    seg: Any,
    path: Path,
    exprs: list[str],
    fmt: str,
    overlay: str,
    reground_every: int,
    stride: int,
    max_frames: int | None,
    t_start: float,
    target: dict[str, Any] | None = None,
) -> Response:
    from hybridgl.errors import ImageTooLargeError, VideoError
    from hybridgl.video.grounding import HybridGLGrounder
    from hybridgl.video.method import TrackOptions, VideoSegmenter
    from hybridgl.video.outputs import write_overlay
    from hybridgl.video.sources import open_source

    limit = max_frames or MAX_FRAMES
    try:
        src = open_source(
            path, stride=stride, max_frames=limit + 1, max_pixels=settings.pixel_limit
        )
    except ImageTooLargeError as e:
        raise too_large(e.width or 0, e.height or 0, settings.pixel_limit) from None
    except (VideoError, ImportError) as e:
        raise ApiError(415, "invalid_video", str(e).replace(str(path), "the upload")) from None
    duration = getattr(src, "duration", None)
    if duration is not None and duration > MAX_SECONDS:
        raise ApiError(413, "video_too_long", f"clip lasts {duration:.1f} s; the limit is "
                       f"{MAX_SECONDS:g} s")  # fmt: skip
    tracker = _tracker(request.app, seg)
    target = target or {}  # target_kwargs: empty for "one", else targets (and thresholds)
    grounder = HybridGLGrounder(seg, max_pixels=settings.pixel_limit,
                                thresholds=target.get("thresholds"))  # fmt: skip
    options = TrackOptions(reground_every=reground_every, targets=target.get("targets", "one"))
    vs = VideoSegmenter(grounder, tracker, options)
    records: list[dict[str, Any]] = []
    frames = 0
    try:
        for result in vs.track(src, exprs):
            frames += 1
            if frames > limit and max_frames is None:
                raise ApiError(413, "video_too_long",
                               f"clip has more than {MAX_FRAMES} frames (after the stride)")  # fmt: skip
            if frames > limit:
                break
            records.extend(result.to_records())
    except VideoError as e:
        raise ApiError(415, "invalid_video", str(e).replace(str(path), "the upload")) from None

    def overlay_bytes(ext: str) -> bytes:
        out = path.with_name(f"overlay.{ext}")
        write_overlay(open_source(path, stride=stride, max_frames=limit), records, out)
        return out.read_bytes()

    if fmt == "mp4":
        return Response(overlay_bytes("mp4"), media_type="video/mp4")
    body: dict[str, Any] = {
        "frames": frames,
        "expressions": exprs,
        "tracker": tracker.name,
        "fps": src.fps,
        "records": records,
    }
    if overlay != "none":
        body["overlay_video"] = {
            "media_type": f"video/{overlay}",
            "base64": base64.b64encode(overlay_bytes(overlay)).decode("ascii"),
        }
    body["timings"] = {"total_ms": round((time.perf_counter() - t_start) * 1000.0, 3)}
    return JSONResponse(body)

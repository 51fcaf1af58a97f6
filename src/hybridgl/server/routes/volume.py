"""``POST /v1/volume``: a DICOM file or a NIfTI volume and a phrase in, the mask on each slice
out; ``GET /v1/volume/{id}/slice/{k}.png``: one slice through a window, for the page's
slice viewer (hybridgl[medical]; docs/SERVER.md "Volumes").

The volume is segmented with :func:`hybridgl.medical.propagate.segment_volume` (per-slice
grounding) on the model thread, inside the admission queue and the request deadline of the
image path. Limits, checked before the models run: the upload size of the image path
(413 ``payload_too_large``), the pixel cap per slice (413 ``image_too_large``, from the
headers), at most :data:`MAX_SLICES` slices along the axis and :data:`MAX_VOXELS` voxels
(413 ``volume_too_large``, from the headers). An unreadable file is 415 ``invalid_volume``.
The last :data:`KEEP_VOLUMES` volumes stay in memory for the slice viewer (an unknown or
evicted id is 404 ``not_found``). An annotation assistant, not a diagnostic device.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from hybridgl.server.errors import ApiError
from hybridgl.server.inputs import too_large
from hybridgl.server.routes import Service, Settings

MAX_SLICES = 256
"""Most slices along the chosen axis one request may segment."""
MAX_VOXELS = 64 * 1024 * 1024
"""Largest volume accepted (voxels, read from the headers): 256 MiB as float32."""
KEEP_VOLUMES = 2
"""Volumes kept for the slice viewer (least recently used dropped first)."""
_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom")

RESPONSES: dict[int | str, dict] = {
    404: {"description": "unknown volume id (or dropped: only the last few are kept)"},
    413: {"description": "upload too large, slices too large, too many slices or voxels"},
    415: {"description": "not a readable DICOM file or NIfTI volume"},
    422: {"description": "missing or bad expression or parameters"},
    503: {"description": "model or the medical extra unavailable, or server busy"},
    504: {"description": "request timed out"},
}


class _Kept:
    """The last volumes segmented (id -> Volume), shared by the routes of one app."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: OrderedDict[str, Any] = OrderedDict()

    def put(self, volume: Any) -> str:
        vid = uuid.uuid4().hex
        with self.lock:
            self.items[vid] = volume
            while len(self.items) > KEEP_VOLUMES:
                self.items.popitem(last=False)
        return vid

    def get(self, vid: str) -> Any:
        with self.lock:
            vol = self.items.get(vid)
            if vol is None:
                raise ApiError(404, "not_found", f"no volume {vid!r} (only the last "
                               f"{KEEP_VOLUMES} are kept; upload it again)")  # fmt: skip
            self.items.move_to_end(vid)
            return vol


def _suffix(name: str) -> str:
    low = name.lower()
    return next((s for s in _SUFFIXES if low.endswith(s)), ".dcm")


def _read(data: bytes, filename: str, settings: Any, axis: int) -> Any:
    from hybridgl.errors import ImageError, ImageTooLargeError, MissingExtraError
    from hybridgl.medical.load import read_volume

    with tempfile.TemporaryDirectory(prefix="hybridgl-volume-") as tmp:
        path = Path(tmp) / f"upload{_suffix(filename)}"
        path.write_bytes(data)
        try:
            vol = read_volume(path, max_voxels=MAX_VOXELS, max_pixels=settings.pixel_limit)
        except MissingExtraError as e:
            raise ApiError(503, "model_unavailable", str(e)) from None
        except ImageTooLargeError as e:
            text = str(e).replace(str(path), "the upload")
            if "voxel" in text:
                raise ApiError(413, "volume_too_large", text) from None
            raise too_large(e.width or 0, e.height or 0, settings.pixel_limit) from None
        except (ImageError, ValueError, OSError) as e:
            text = str(e).replace(str(path), "the upload")
            raise ApiError(415, "invalid_volume", text) from None
    n = vol.num_slices(axis)
    if n > MAX_SLICES:
        raise ApiError(413, "volume_too_large", f"{n} slices along axis {axis}; the limit "
                       f"is {MAX_SLICES}")  # fmt: skip
    return vol


def _window(vol: Any, spec: str | None) -> Any:
    from hybridgl.errors import ImageError

    try:
        return vol.resolve_window(spec)
    except (ImageError, ValueError) as e:
        raise ApiError(422, "invalid_parameter", f"window: {e}") from None


def include(app: FastAPI) -> None:
    app.state.volumes = _Kept()

    @app.post("/v1/volume", summary="Segment a phrase through a scan", responses=RESPONSES)
    async def volume(
        request: Request,
        service: Service,
        settings: Settings,
        file: Annotated[UploadFile, File(description="a DICOM file or a NIfTI .nii/.nii.gz")],
        expression: Annotated[str, Form(description="the phrase, e.g. the liver")],
        window: Annotated[
            str | None, Form(description="preset, LEVEL,WIDTH, pLO-HI, dicom or auto")
        ] = None,
        axis: Annotated[int, Query(ge=0, le=2)] = 2,
        keyslice: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        t_start = time.perf_counter()
        phrase = expression.strip()
        if not phrase:
            raise ApiError(422, "empty_expression", "the expression is empty")
        if len(phrase) > settings.max_expression_chars:
            raise ApiError(422, "expression_too_long", f"the expression has {len(phrase)} "
                           f"characters; the limit is {settings.max_expression_chars}")  # fmt: skip
        ticket = service.admit()  # 503 when the queue is full
        try:
            data = await file.read()
            await file.close()
            if not data:
                raise ApiError(415, "invalid_volume", "the upload is empty")
            if len(data) > settings.max_upload_bytes:
                raise ApiError(413, "payload_too_large", f"upload is {len(data)} bytes; the "
                               f"limit is {settings.max_upload_bytes} bytes")  # fmt: skip
            seg = service.require_model()
            name = file.filename or ""

            def work() -> tuple[Any, dict[str, Any]]:  # on the model thread: reading too
                vol = _read(data, name, settings, axis)
                n = vol.num_slices(axis)
                if keyslice is not None and keyslice >= n:
                    raise ApiError(422, "invalid_parameter", f"keyslice {keyslice} is outside "
                                   f"0..{n - 1}")  # fmt: skip
                win = _window(vol, window)
                return vol, _segment(seg, vol, phrase, axis, keyslice, win, settings)

            vol, body = await service.run_on_model(ticket, work)
        finally:
            ticket.release()
        body["volume_id"] = request.app.state.volumes.put(vol)
        body["timings"] = {"total_ms": round((time.perf_counter() - t_start) * 1000.0, 3)}
        return JSONResponse(body)

    @app.get(
        "/v1/volume/{volume_id}/slice/{index}.png",
        summary="One slice of a segmented volume through a window",
        responses={404: RESPONSES[404], 422: RESPONSES[422]},
    )
    async def slice_png(
        request: Request,
        volume_id: str,
        index: int,
        axis: Annotated[int, Query(ge=0, le=2)] = 2,
        window: Annotated[str | None, Query(description="as for POST /v1/volume")] = None,
    ) -> Response:
        from PIL import Image

        vol = request.app.state.volumes.get(volume_id)
        n = vol.num_slices(axis)
        if not 0 <= index < n:
            raise ApiError(404, "not_found", f"slice {index} is outside 0..{n - 1}")
        image = vol.slice_rgb(index, axis, _window(vol, window))
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png",
                        headers={"Cache-Control": "no-store"})  # fmt: skip


def _segment(
    seg: Any, vol: Any, phrase: str, axis: int, keyslice: int | None, win: Any, settings: Any
) -> dict[str, Any]:
    from hybridgl.masks import mask_to_rle
    from hybridgl.medical.outputs import DISCLAIMER
    from hybridgl.medical.propagate import segment_volume

    masks: dict[str, Any] = {}

    def on_slice(rec: Any, _image: Any, mask: Any) -> None:
        if rec.found:
            masks[str(rec.index)] = mask_to_rle(mask)

    res = segment_volume(seg, vol, phrase, axis=axis, keyslice=keyslice, window=win,
                         on_slice=on_slice, max_pixels=settings.pixel_limit)  # fmt: skip
    doc = res.to_dict()
    return {
        "note": DISCLAIMER,
        "shape": list(vol.shape),
        "num_slices": vol.num_slices(axis),
        "modality": vol.modality,
        "spacing_mm": [float(s) for s in vol.spacing],
        **{
            k: doc[k]
            for k in (
                "expression",
                "found",
                "axis",
                "key_slice",
                "extent",
                "voxels",
                "volume_ml",
                "window",
            )
        },  # fmt: skip
        "records": doc["slices"],
        "masks": masks,
    }

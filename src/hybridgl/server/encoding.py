"""Response encoding: predictions to the JSON body, the PNG mask and the PNG overlay."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridgl.server.service import Outcome

if TYPE_CHECKING:
    from hybridgl.state import ImageState


def result_record(
    pred: Any,
    state: ImageState,
    *,
    candidate_masks: bool = False,
    polygons: bool = True,
) -> dict[str, Any]:
    """One result: the package's one prediction record plus candidate boxes (and masks).

    The record is :meth:`hybridgl.types.Prediction.to_dict` unchanged (docs/FORMATS.md);
    the server adds ``box`` (XYWH) to each candidate and, with ``candidate_masks``, its
    ``mask`` as COCO RLE, the same encoding as the record's own ``mask``.
    """
    from hybridgl.masks import mask_to_rle

    rec = pred.to_dict(polygons=polygons)
    boxes = state.boxes  # XYWH at the input resolution
    for cand in rec.get("candidates", []):
        idx = int(cand["index"])
        if 0 <= idx < len(boxes):
            cand["box"] = [float(v) for v in boxes[idx]]
        if candidate_masks:  # at the input resolution, like the record's own mask
            cand["mask"] = mask_to_rle(state.input_mask(idx))
    return rec


def segment_body(
    outcome: Outcome,
    *,
    top_k: int,
    guidance: bool,
    candidate_masks: bool,
    polygons: bool,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/segment`` (docs/SERVER.md, "JSON response")."""
    state = outcome.state
    results = [
        result_record(p, state, candidate_masks=candidate_masks, polygons=polygons)
        for p in outcome.predictions
    ]
    return {
        "image": {
            "sha256": outcome.upload.sha256,
            "width": int(state.width),
            "height": int(state.height),
            "num_proposals": int(state.num_proposals),
        },
        "cache_hit": outcome.cache_hit,
        "top_k": top_k,
        "guidance": guidance,
        "results": results,
        "timings": {name: round(v, 3) for name, v in timings.items()},
    }


def result_headers(outcome: Outcome) -> dict[str, str]:
    """Headers with the first result's facts (also on PNG answers)."""
    first = outcome.predictions[0]
    score = float(first.score)
    return {
        "X-Image-SHA256": outcome.upload.sha256,
        "X-Cache-Hit": "true" if outcome.cache_hit else "false",
        "X-Found": "true" if first.found else "false",
        "X-Targets": str(len(getattr(first, "targets", None) or ([0] if first.found else []))),
        "X-Score": f"{score:.6g}" if math.isfinite(score) else "null",
    }


def mask_png(outcome: Outcome) -> bytes:
    """The first expression's mask as an 8-bit 0/255 PNG."""
    from hybridgl.masks import mask_to_png_bytes

    return mask_to_png_bytes(np.asarray(outcome.predictions[0].mask, dtype=bool))


def overlay_png(outcome: Outcome, label: str) -> bytes:
    """The image with the first expression's mask, box and ``label`` drawn on it."""
    from PIL import Image

    from hybridgl.viz import overlay

    first = outcome.predictions[0]
    box = tuple(first.box) if first.found else None
    drawn = overlay(outcome.state.image, first.mask, box=box, label=label)
    buf = io.BytesIO()
    Image.fromarray(drawn).save(buf, format="PNG")
    return buf.getvalue()

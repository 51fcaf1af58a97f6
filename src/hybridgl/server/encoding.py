"""Response encoding: predictions to the JSON body, the PNG mask and the PNG overlay."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from hybridgl.server.service import Outcome


def _num(x: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf/None)."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return str(obj)


def _candidate_record(cand: Any, state: Any, with_mask: bool) -> dict[str, Any]:
    from hybridgl.masks import mask_to_rle

    rec = {k: _clean(v) for k, v in cand.to_dict().items()}
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

    rec = _clean(prediction_record(pred, expression, include_polygons=polygons))
    rec["candidates"] = [_candidate_record(c, state, candidate_masks) for c in pred.candidates]
    # the library reports seconds; the API reports milliseconds throughout
    rec["timings"] = {
        f"{name}_ms": _num(float(value) * 1000.0) for name, value in dict(pred.timings).items()
    }
    return rec


def segment_body(
    outcome: Outcome,
    expressions: list[str],
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
        prediction_json(p, e, state, candidate_masks=candidate_masks, polygons=polygons)
        for p, e in zip(outcome.predictions, expressions, strict=True)
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
    return {
        "X-Image-SHA256": outcome.upload.sha256,
        "X-Cache-Hit": "true" if outcome.cache_hit else "false",
        "X-Found": "true" if first.found else "false",
        "X-Score": f"{_num(first.score) or 0.0:.6g}",
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

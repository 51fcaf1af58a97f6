"""Result types shared by the library, the CLI, the server and the evaluation.

Coordinate conventions: masks are ``(H, W)`` bool arrays at the input image's
resolution; boxes are XYWH in pixels (x = min column, y = min row,
w = max column - x, h = max row - y, SAM's ``bbox`` convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The relation vocabulary (METHOD.md section 5), defined here only: the parser's keyword
#: table (hybridgl.text.RELATION_TABLE), the guidance and the JSON Schema use these names.
RELATIONS = ("none", "left", "right", "up", "down", "big", "small", "within")
#: The direction vocabulary (METHOD.md section 6), defined here only.
DIRECTIONS = ("none", "left", "right", "middle", "up", "down")


@dataclass(frozen=True)
class Parse:
    """What the text parser extracted from one referring expression.

    Attributes:
        expression: the expression as given by the caller.
        sentence: lower-cased, re-tokenised sentence ``s`` (METHOD.md section 4).
        noun_phrase: key noun phrase ``np``.
        context_nouns: noun chunks other than ``np`` whose root is no relation word.
        context_roots: the root word of each context noun chunk (same order).
        relation: one of :data:`RELATIONS`.
        direction: one of :data:`DIRECTIONS`.
    """

    expression: str
    sentence: str
    noun_phrase: str
    context_nouns: tuple[str, ...] = ()
    context_roots: tuple[str, ...] = ()
    relation: str = "none"
    direction: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "expression": str(self.expression),
            "sentence": str(self.sentence),
            "noun_phrase": str(self.noun_phrase),
            "context_nouns": [str(n) for n in self.context_nouns],
            "context_roots": [str(r) for r in self.context_roots],
            "relation": str(self.relation),
            "direction": str(self.direction),
        }


@dataclass(frozen=True)
class Candidate:
    """One ranked proposal with the scores that explain its rank.

    ``clip_score`` is the scaled cosine ``c_i`` (METHOD.md section 4); ``probability``
    is ``softmax(c)_i``. ``relation_score`` (``r_i``), ``coherence_score`` (``g_i``)
    and ``final_score`` are only defined for the top-k1 candidates that take part in
    the spatial guidance; they are ``None`` otherwise.
    """

    index: int
    clip_score: float
    probability: float
    relation_score: float | None = None
    coherence_score: float | None = None
    final_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ints and floats, None for the undefined scores and for NaN/inf."""
        return {
            "index": int(self.index),
            "clip_score": _finite(self.clip_score),
            "probability": _finite(self.probability),
            "relation_score": _finite(self.relation_score),
            "coherence_score": _finite(self.coherence_score),
            "final_score": _finite(self.final_score),
        }


@dataclass
class Prediction:
    """The answer for one expression on one image.

    Attributes:
        mask: ``(H, W)`` bool, the chosen proposal at the input resolution; all False
            when ``found`` is False.
        box: XYWH pixels of the chosen mask; ``(0, 0, 0, 0)`` when not found.
        score: the score the choice was made on: ``final_i`` with spatial guidance,
            ``softmax(c)_i`` without. Not a calibrated probability.
        found: False when the image has no proposal at all.
        candidates: ranked candidates, best first (at most ``top_k``).
        pure_index: proposal chosen by CLIP alone (argmax ``c``), or None.
        index: proposal chosen with spatial guidance (the answer), or None.
        parse: the parse of the expression.
        num_proposals: how many proposals the image had.
    """

    mask: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    found: bool
    candidates: list[Candidate]
    pure_index: int | None
    index: int | None
    parse: Parse
    num_proposals: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError(
                f"mask must be a (H, W) bool array, got {self.mask.dtype} {self.mask.shape}"
            )

    def to_dict(self, *, polygons: bool = False, candidates: bool = True) -> dict[str, Any]:
        """The one JSON record of a prediction (docs/FORMATS.md, ``prediction.schema.json``).

        Used unchanged by ``hybridgl segment --json``, batch and evaluation records and
        every HTTP response; faces may add their own keys (``id``, ``image``, ``mask_png``,
        ...) but never change these.

        Args:
            polygons: add ``"polygons"``, the mask's outer contours as COCO polygons
                (pixel corners, largest first; holes are not represented).
            candidates: include ``"candidates"`` (the ranked list); False leaves the key out.

        Returns:
            A dict of plain Python types that ``json.dumps(..., allow_nan=False)``
            accepts: ``expression``, ``found``, ``score``, ``box`` (XYWH, SAM
            convention), ``area``, ``height``, ``width``, ``mask`` (COCO compressed RLE
            ``{"size": [H, W], "counts": str}``), ``index``, ``pure_index``,
            ``num_proposals``, ``candidates``, ``parse``, ``timings`` (seconds) and,
            when asked for, ``polygons``. A number that is not finite (NaN, inf) is
            written as ``null``: JSON has no such numbers, and a made-up finite value
            would look like a real score.
        """
        from hybridgl.masks import mask_to_polygons, mask_to_rle

        d: dict[str, Any] = {
            "expression": self.parse.expression,
            "found": bool(self.found),
            "score": _finite(self.score),
            "box": [_finite(v) for v in self.box],
            "area": int(np.count_nonzero(self.mask)),
            "height": int(self.mask.shape[0]),
            "width": int(self.mask.shape[1]),
            "mask": mask_to_rle(self.mask),
        }
        if polygons:
            d["polygons"] = mask_to_polygons(self.mask)
        d["index"] = _opt_int(self.index)
        d["pure_index"] = _opt_int(self.pure_index)
        d["num_proposals"] = int(self.num_proposals)
        if candidates:
            d["candidates"] = [c.to_dict() for c in self.candidates]
        d["parse"] = self.parse.to_dict()
        d["timings"] = {str(k): _finite(v) for k, v in self.timings.items()}
        return d

    def to_coco_result(self, image_id: int | str, category_id: int = 1) -> dict[str, Any]:
        """One record of a COCO results file (``COCO.loadRes`` / ``COCOeval`` input).

        Args:
            image_id: the image's id in the COCO annotation file.
            category_id: the category the result is scored against (referring
                segmentation has no classes; 1 by default).

        Returns:
            ``{"image_id", "category_id", "segmentation" (compressed RLE), "bbox",
            "score"}``. ``bbox`` follows COCO's own convention, ``pycocotools.mask.toBbox``
            of the mask (``w`` = number of columns covered, one more than the SAM-style
            ``box``), which is also what ``COCO.loadRes`` recomputes for segmentation
            results. A prediction with nothing found gives an empty segmentation and
            ``[0, 0, 0, 0]``. A score that is not finite becomes 0.0 (COCO sorts on it).
        """
        from hybridgl.masks import mask_to_rle

        return coco_result_entry(mask_to_rle(self.mask), image_id, self.score, category_id)

    def to_supervision(self) -> Any:
        """The prediction as a ``supervision.Detections`` (needs ``hybridgl[supervision]``).

        Returns:
            ``Detections.empty()`` when nothing was found; else one detection with
            ``xyxy`` ``(1, 4)`` float32 (``x + w``, ``y + h`` of :attr:`box`: the last
            covered column and row, as ``supervision.mask_to_xyxy`` computes them),
            ``mask`` ``(1, H, W)`` bool, ``confidence`` ``(1,)``, ``class_id`` ``[0]``
            (referring segmentation has one class; annotators colour by class by
            default) and ``data`` with ``"expression"`` and ``"index"`` (the chosen proposal)
            (arrays of one element).

        Raises:
            ImportError: supervision is not installed; the message names the extra.
        """
        try:
            import supervision as sv
        except ImportError:
            from hybridgl.errors import MissingExtraError

            raise MissingExtraError("to_supervision", "supervision") from None
        if not self.found or not self.mask.any():
            return sv.Detections.empty()
        x, y, w, h = (float(v) for v in self.box)
        score = _finite(self.score)
        return sv.Detections(
            xyxy=np.array([[x, y, x + w, y + h]], dtype=np.float32),
            mask=self.mask[None].copy(),
            confidence=np.array([np.nan if score is None else score], dtype=np.float32),
            class_id=np.array([0]),
            data={
                "expression": np.array([self.parse.expression]),
                "index": np.array([-1 if self.index is None else int(self.index)]),
            },
        )


def _finite(value: Any) -> float | None:
    """``float(value)``, or None when it is NaN or infinite (JSON has neither)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def coco_result_entry(
    rle: dict[str, Any], image_id: int | str, score: Any, category_id: int = 1
) -> dict[str, Any]:
    """One COCO results entry of a mask given as COCO RLE (``{"size", "counts": str}``).

    The one place the entry is made: :meth:`Prediction.to_coco_result` and the bulk jobs'
    COCO results files (from records' RLE) both come here. ``bbox`` is pycocotools' box
    of the mask; a score that is not finite becomes 0.0 (COCO sorts on it).
    """
    from pycocotools import mask as mask_utils

    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    bbox = [float(v) for v in mask_utils.toBbox(coded)]
    value = _finite(score)
    return {
        "image_id": image_id,
        "category_id": int(category_id),
        "segmentation": rle,
        "bbox": bbox,
        "score": 0.0 if value is None else value,
    }

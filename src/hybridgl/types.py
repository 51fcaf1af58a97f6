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
        number_cues: the rules that say the key noun phrase names several objects
            (``"plural_noun:dogs"``, ``"numeral:two"``, ``"quantifier:both"``; see
            :func:`hybridgl.text.number_cues`); empty for one object. Only
            ``targets="auto"`` reads it.
    """

    expression: str
    sentence: str
    noun_phrase: str
    context_nouns: tuple[str, ...] = ()
    context_roots: tuple[str, ...] = ()
    relation: str = "none"
    direction: str = "none"
    number_cues: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "expression": str(self.expression),
            "sentence": str(self.sentence),
            "noun_phrase": str(self.noun_phrase),
            "context_nouns": [str(n) for n in self.context_nouns],
            "context_roots": [str(r) for r in self.context_roots],
            "relation": str(self.relation),
            "direction": str(self.direction),
            "number_cues": [str(c) for c in self.number_cues],
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
class Target:
    """One object the expression names (a chosen proposal).

    Attributes:
        index: the proposal's index.
        mask: ``(H, W)`` bool at the input resolution.
        box: XYWH pixels of the mask (SAM convention).
        score: the score it was chosen on: the final score with guidance (over the
            candidates of ``targets="many"``, or the answer's own with ``"one"``), the CLIP
            softmax without guidance in ``"one"``, the cosine without guidance otherwise.
        clip_score: ``c_i``, the scaled cosine with the phrase (METHOD.md section 4).
        relation_score, coherence_score: ``r_i`` and ``g_i`` when guidance was applied to it.
    """

    index: int
    mask: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    clip_score: float | None = None
    relation_score: float | None = None
    coherence_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        from hybridgl.masks import mask_to_rle

        return {
            "index": int(self.index),
            "score": _finite(self.score),
            "clip_score": _finite(self.clip_score),
            "relation_score": _finite(self.relation_score),
            "coherence_score": _finite(self.coherence_score),
            "box": [_finite(v) for v in self.box],
            "area": int(np.count_nonzero(self.mask)),
            "mask": mask_to_rle(self.mask),
        }


@dataclass(frozen=True)
class TargetEvidence:
    """Why a prediction has the targets it has (``found`` and how many).

    Attributes:
        mode: ``"one"``, ``"many"`` or ``"auto"`` (the mode asked for).
        rule: what decided ``found``: ``"best"`` (``"one"``: the answer is the best
            proposal, no further test), ``"no_proposal"`` (no proposal with a pixel),
            ``"below_floor"`` (cosine under the floor), ``"contrast"`` (a contrast prompt
            describes the best region as well as the phrase), ``"passed"`` (both tests
            passed).
        several: whether several targets were looked for (``"many"``; ``"auto"`` with a
            number cue); None in ``"one"``.
        number_cues: the parse's number cues (``"auto"`` decides on them).
        best_index: the best proposal (the ``"one"`` answer) the tests were made on.
        cosine: ``cos(best region, phrase)``.
        contrast: ``cos(best region, prompt)`` per contrast prompt.
        floor, contrast_margin, margin, cosine_margin: the thresholds used.
        considered: proposals considered as targets; ``duplicates``: of those that
            qualified, how many were dropped as duplicates or parts of a target.
        pool: ``(index, target score, cosine)`` of each proposal considered as a target,
            in pool order (several targets looked for only). Python only, not in
            :meth:`to_dict`: ``hybridgl calibrate`` replays the rules on it offline.
    """

    mode: str = "one"
    rule: str = "best"
    several: bool | None = None
    number_cues: tuple[str, ...] = ()
    best_index: int | None = None
    cosine: float | None = None
    contrast: dict[str, float] = field(default_factory=dict)
    floor: float | None = None
    contrast_margin: float | None = None
    margin: float | None = None
    cosine_margin: float | None = None
    considered: int = 0
    duplicates: int = 0
    pool: tuple[tuple[int, float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": str(self.mode),
            "rule": str(self.rule),
            "several": None if self.several is None else bool(self.several),
            "number_cues": [str(c) for c in self.number_cues],
            "best_index": _opt_int(self.best_index),
            "cosine": _finite(self.cosine),
            "contrast": {str(k): _finite(v) for k, v in self.contrast.items()},
            "floor": _finite(self.floor),
            "contrast_margin": _finite(self.contrast_margin),
            "margin": _finite(self.margin),
            "cosine_margin": _finite(self.cosine_margin),
            "considered": int(self.considered),
            "duplicates": int(self.duplicates),
        }


@dataclass
class Prediction:
    """The answer for one expression on one image.

    Attributes:
        mask: ``(H, W)`` bool at the input resolution: the union of the targets (the
            chosen proposal with ``targets="one"``); all False when ``found`` is False.
        box: XYWH pixels of the mask; ``(0, 0, 0, 0)`` when not found.
        score: the score the choice was made on: ``final_i`` with spatial guidance,
            ``softmax(c)_i`` without, of the best proposal. Not a calibrated probability.
        found: False when there is no target: the image has no proposal at all, or (modes
            ``"many"`` and ``"auto"``) the no-target rules decided so (``evidence``).
        candidates: ranked candidates, best first (at most ``top_k``).
        pure_index: proposal chosen by CLIP alone (argmax ``c``), or None.
        index: proposal chosen with spatial guidance (the answer), or None.
        parse: the parse of the expression.
        num_proposals: how many proposals the image had.
        targets: the chosen proposals, best first (one with ``targets="one"`` when found;
            none when not found).
        evidence: what decided ``found`` and the number of targets.
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
    targets: list[Target] = field(default_factory=list)
    evidence: TargetEvidence = field(default_factory=TargetEvidence)

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
            ``num_proposals``, ``candidates``, ``parse``, ``timings`` (seconds),
            ``targets`` (each with its own mask), ``evidence`` and, when asked for,
            ``polygons``. A number that is not finite (NaN, inf) is
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
        d["targets"] = [t.to_dict() for t in self.targets]
        d["evidence"] = self.evidence.to_dict()
        return d

    def to_coco_results(self, image_id: int | str, category_id: int = 1) -> list[dict[str, Any]]:
        """One COCO results record per target (none when nothing was found).

        Each record is :meth:`to_coco_result`'s shape for that target's mask and score.
        """
        from hybridgl.masks import mask_to_rle

        return [
            coco_result_entry(mask_to_rle(t.mask), image_id, t.score, category_id)
            for t in self.targets
        ]

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

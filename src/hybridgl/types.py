"""Result types shared by the library, the CLI, the server and the evaluation.

Coordinate conventions: masks are ``(H, W)`` bool arrays at the input image's
resolution; boxes are XYWH in pixels (x = min column, y = min row,
w = max column - x, h = max row - y, SAM's ``bbox`` convention).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

RELATIONS = ("none", "left", "right", "up", "down", "big", "small", "within")
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
        d = asdict(self)
        d["context_nouns"] = list(self.context_nouns)
        d["context_roots"] = list(self.context_roots)
        return d


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
        return asdict(self)


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

    def to_dict(self, include_mask: bool = False) -> dict[str, Any]:
        """JSON-friendly view (the mask is left out unless asked for, as a nested list)."""
        d: dict[str, Any] = {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "found": bool(self.found),
            "index": self.index,
            "pure_index": self.pure_index,
            "num_proposals": self.num_proposals,
            "candidates": [c.to_dict() for c in self.candidates],
            "parse": self.parse.to_dict(),
            "timings": dict(self.timings),
        }
        if include_mask:
            d["mask"] = self.mask.tolist()
        return d

"""Grounding a phrase on one frame with the HybridGL method, for the video method.

:class:`HybridGLGrounder` runs the image method on a frame for several phrases at once (the
frame is encoded once) and, when tracked masks are given, scores them as extra proposals
beside SAM's: the method's own score of the tracked mask is then known, so re-grounding can
ask "does the method prefer another region, and by how much?".

The absence rules of grounding (docs/VIDEO.md): a phrase matches nothing on a frame when the
frame has no proposal, or when ``min_cosine`` is set and the cosine between the chosen
region's hybrid feature and the phrase's text embedding is below it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hybridgl.targets import TargetRules, load_thresholds, target_kwargs
from hybridgl.types import Prediction

__all__ = ["Grounder", "Grounding", "HybridGLGrounder"]


@dataclass
class Grounding:
    """The method's answer for one phrase on one frame.

    Attributes:
        found: the phrase matches something (after the absence rules).
        mask: ``(H, W)`` bool, the chosen region (empty when not found).
        score: the method's score of its choice (``final`` score with guidance).
        cosine: cosine of the chosen region with the phrase (``c_i / logit_scale``).
        tracked_score: the method's score of the tracked mask given for this phrase, when
            it was among the candidates that get a final score; None otherwise.
        reason: why not found: ``no_proposal`` or ``cosine``.
        prediction: the image method's :class:`~hybridgl.types.Prediction`.
        targets: with ``targets="many"`` / ``"auto"``: one grounding per target the method
            returns, best first (empty when nothing matches); None with ``"one"``.
    """

    found: bool
    mask: np.ndarray
    score: float | None = None
    cosine: float | None = None
    tracked_score: float | None = None
    reason: str | None = None
    prediction: Prediction | None = None
    targets: list[Grounding] | None = None


class Grounder(Protocol):
    """Phrases on a frame -> one :class:`Grounding` each (tracked masks optional;
    ``targets="many"`` / ``"auto"``: every target of each phrase in
    :attr:`Grounding.targets`)."""

    def ground(
        self,
        image: np.ndarray,
        expressions: Sequence[str],
        tracked: Sequence[np.ndarray | None] | None = None,
        targets: str = "one",
    ) -> list[Grounding]: ...


class HybridGLGrounder:
    """The HybridGL image method as a :class:`Grounder`.

    Args:
        segmenter: a :class:`~hybridgl.Segmenter` (or anything with its public stages).
        top_k: ranked candidates kept in each prediction.
        guidance: the method's spatial guidance (METHOD.md sections 5-7).
        min_cosine: absence threshold on the chosen region's cosine (None: off).
        max_pixels: the pixel cap passed to ``encode_image``.
        thresholds: the target rules of ``targets="many"`` / ``"auto"``: a
            :class:`~hybridgl.targets.TargetRules`, a thresholds JSON path or a dict
            (:func:`hybridgl.targets.load_thresholds`; read here, so a bad file fails before
            the first frame); None: the rules' defaults. ``"one"`` does not use them.
    """

    def __init__(
        self,
        segmenter: Any,
        top_k: int = 3,
        guidance: bool = True,
        min_cosine: float | None = None,
        max_pixels: int | None = None,
        thresholds: TargetRules | str | Path | Mapping[str, Any] | None = None,
    ) -> None:
        self.seg = segmenter
        self.thresholds = None if thresholds is None else load_thresholds(thresholds)
        self.top_k = top_k
        self.guidance = guidance
        self.min_cosine = min_cosine
        self.max_pixels = max_pixels
        self._parses: dict[str, Any] = {}

    def _parse(self, expression: str) -> Any:
        if expression not in self._parses:
            self._parses[expression] = self.seg.parse(expression)
        return self._parses[expression]

    def _state(self, image: np.ndarray, extra: list[np.ndarray]) -> tuple[Any, int]:
        """The frame's state with SAM's proposals, then the ``extra`` masks appended."""
        import dataclasses

        import torch

        base = self.seg.encode_image(image, max_pixels=self.max_pixels)
        if not extra:
            return base, base.num_proposals
        more = self.seg.encode_image(image, proposals=np.stack(extra), max_pixels=self.max_pixels)
        state = dataclasses.replace(  # the same ImageState with the extra proposals appended
            base,
            masks=np.concatenate([base.masks, more.masks]),
            boxes=np.concatenate([base.boxes, more.boxes]),
            features=torch.cat([base.features, more.features.to(base.features.device)]),
            source="sam+tracked",
            timings={k: base.timings.get(k, 0.0) + more.timings.get(k, 0.0) for k in base.timings},
        )
        return state, base.num_proposals

    def ground(
        self,
        image: np.ndarray,
        expressions: Sequence[str],
        tracked: Sequence[np.ndarray | None] | None = None,
        targets: str = "one",
    ) -> list[Grounding]:
        if targets != "one":
            return self._ground_many(image, expressions, targets)
        tracked = list(tracked) if tracked is not None else [None] * len(expressions)
        extra_of: dict[int, int] = {}
        extra: list[np.ndarray] = []
        for i, m in enumerate(tracked):
            if m is not None and m.any():
                extra_of[i] = len(extra)
                extra.append(m)
        state, n_sam = self._state(image, extra)
        # every candidate with a final score is listed (top-k1 of the guidance)
        k = max(self.top_k, int(getattr(self.seg.config, "k1", 1)))
        scale = float(getattr(self.seg, "logit_scale", 1.0)) or 1.0
        out = []
        for i, expr in enumerate(expressions):
            pred = self.seg.score(state, self._parse(expr), top_k=k, guidance=self.guidance)
            if not pred.found or pred.index is None:
                out.append(Grounding(False, pred.mask, reason="no_proposal", prediction=pred))
                continue
            by_index = {c.index: c for c in pred.candidates}
            chosen = by_index.get(pred.index)
            cosine = chosen.clip_score / scale if chosen is not None else None
            tracked_score = None
            if i in extra_of:
                mine = by_index.get(n_sam + extra_of[i])
                if mine is not None:
                    tracked_score = (
                        mine.final_score if mine.final_score is not None else mine.probability
                    )
            pred.candidates = pred.candidates[: self.top_k]
            if self.min_cosine is not None and (cosine is None or cosine < self.min_cosine):
                empty = np.zeros_like(pred.mask)
                out.append(
                    Grounding(False, empty, pred.score, cosine, tracked_score, "cosine", pred)
                )
                continue
            out.append(Grounding(True, pred.mask, pred.score, cosine, tracked_score, None, pred))
        return out

    def _ground_many(
        self, image: np.ndarray, expressions: Sequence[str], mode: str
    ) -> list[Grounding]:
        """Every target of each phrase (``predict(..., targets=mode)`` of the image method:
        :mod:`hybridgl.targets`), each a :class:`Grounding`; the cosine rule drops a target
        whose cosine is below ``min_cosine``."""
        state, _ = self._state(image, [])
        scale = float(getattr(self.seg, "logit_scale", 1.0)) or 1.0
        kwargs = target_kwargs(mode, self.thresholds)  # targets=mode, thresholds= when set
        out = []
        for expr in expressions:
            pred = self.seg.score(state, self._parse(expr), top_k=self.top_k,
                                  guidance=self.guidance, **kwargs)  # fmt: skip
            found: list[Grounding] = []
            for t in pred.targets if pred.found else []:
                cos = t.clip_score / scale if t.clip_score is not None else None
                if self.min_cosine is not None and (cos is None or cos < self.min_cosine):
                    continue
                found.append(Grounding(True, t.mask, t.score, cos, None, None, pred))
            if not found:
                empty = np.zeros_like(pred.mask)
                reason = ("cosine" if pred.found and pred.targets
                          else "no_target" if state.num_proposals else "no_proposal")  # fmt: skip
                out.append(Grounding(False, empty, None, None, None, reason, pred, []))
                continue
            best = found[0]
            out.append(Grounding(True, best.mask, best.score, best.cosine, None, None, pred,
                                 found))  # fmt: skip
        return out

"""Zero, one or many targets: the training-free decision rules (issue 19).

``predict(expression, targets=...)`` answers in one of three modes (:data:`TARGET_MODES`):

- ``"one"`` (the default): today's behaviour, bit for bit; the chosen proposal is the one
  target, and nothing is found only when the image has no proposal with a pixel;
- ``"many"``: every proposal the phrase selects (:func:`eligible_targets`, then
  :func:`dedupe`), or none (:func:`no_target_check`);
- ``"auto"``: ``"many"`` when the parse says the phrase names several objects
  (:func:`wants_many`, from :attr:`hybridgl.types.Parse.number_cues`), else at most one
  target; either may be none.

Every threshold is a field of :class:`TargetRules` with a documented default;
``hybridgl calibrate`` fits them on labelled data and writes the JSON that
:meth:`TargetRules.load` (``--thresholds FILE``, ``thresholds=``) reads. The functions here
are pure arithmetic on plain numbers and arrays (no model), tested with hand-computed values;
:mod:`hybridgl.scoring` feeds them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import HybridGLError

__all__ = [
    "CONTRAST_PROMPTS",
    "TARGET_MODES",
    "TargetRules",
    "check_mode",
    "dedupe",
    "eligible_targets",
    "load_thresholds",
    "no_target_check",
    "overlap_counts",
    "target_kwargs",
    "wants_many",
]

#: The answer modes of ``predict(..., targets=...)``.
TARGET_MODES: tuple[str, ...] = ("one", "many", "auto")

#: Texts that describe nothing in particular. A best region that CLIP finds closer to one
#: of them than to the phrase is not what the phrase names. "the whole image" is a text
#: prompt (no second image pass), so stored image states stay usable.
CONTRAST_PROMPTS: tuple[str, ...] = ("background", "a photo", "the whole image")

#: Largest thresholds file read (a handful of numbers; anything bigger is not ours).
MAX_THRESHOLDS_BYTES = 64 * 1024


class ThresholdsError(HybridGLError, ValueError):
    """A thresholds file (or dict) that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TargetRules:
    """The thresholds of the target decision (``targets="many"`` / ``"auto"``).

    Defaults were chosen to work without calibration data: relative tests (margins to the
    best proposal, contrast prompts) carry most of the decision, and the absolute floor is
    low. ``hybridgl calibrate`` fits ``floor``, ``contrast_margin``, ``margin`` and
    ``cosine_margin`` on a labelled split.

    Attributes:
        margin: several targets: a proposal joins when its guided target score (the final
            score ``(1 - alpha) * r + alpha * g`` computed over the pool, with the
            relation and coherence guidance applied to it as to the answer) is at least the
            best target's minus ``margin``. Without guidance the score is the cosine and
            only ``cosine_margin`` applies.
        cosine_margin: and its phrase cosine at least the best target's minus this.
        pool: how many proposals (the highest CLIP scores, at least ``k1``) are
            considered as targets.
        max_targets: at most this many targets (the best first).
        dedup_iou: a proposal overlapping an already chosen target with IoU above this is
            a duplicate (SAM proposes the same object several times).
        containment: a proposal with more than this fraction of its pixels inside an
            already chosen target is a part of it (a shirt of a chosen person), not another
            target; 1.0 switches the test off.
        floor: no target when the cosine of the best region with the phrase is below this.
            Matching image-text pairs of CLIP ViT-B/16 score about 0.25 to 0.35, unrelated
            ones about 0.1 to 0.2; 0.15 only rules out the clearly unrelated.
        contrast_margin: no target when ``cos(region, phrase) - max cos(region, prompt)``
            over :attr:`contrast_prompts` is below this (0: the phrase must describe the
            region at least as well as "background" does).
        contrast_prompts: the prompts that describe nothing in particular.
    """

    margin: float = 0.25
    cosine_margin: float = 0.03
    pool: int = 10
    max_targets: int = 20
    dedup_iou: float = 0.5
    containment: float = 0.8
    floor: float = 0.15
    contrast_margin: float = 0.0
    contrast_prompts: tuple[str, ...] = CONTRAST_PROMPTS

    def __post_init__(self) -> None:
        for name in ("margin", "cosine_margin", "floor", "contrast_margin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ThresholdsError(f"{name} must be a finite number, got {v!r}")
        for name in ("pool", "max_targets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ThresholdsError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("dedup_iou", "containment"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ThresholdsError(f"{name} must be a number in [0, 1], got {v!r}")
        prompts = self.contrast_prompts
        if not isinstance(prompts, tuple) or not all(
            isinstance(t, str) and t.strip() for t in prompts
        ):
            raise ThresholdsError("contrast_prompts must be a tuple of non-empty strings")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the thresholds file's ``"rules"``)."""
        d = asdict(self)
        d["contrast_prompts"] = list(self.contrast_prompts)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "thresholds") -> TargetRules:
        """Rules from a dict; unknown keys and bad values are :class:`ThresholdsError`."""
        if not isinstance(d, Mapping):
            raise ThresholdsError(f"{source}: expected an object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ThresholdsError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
        kw = dict(d)
        if "contrast_prompts" in kw:
            if not isinstance(kw["contrast_prompts"], list):
                raise ThresholdsError(f"{source}: contrast_prompts must be a list of strings")
            kw["contrast_prompts"] = tuple(kw["contrast_prompts"])
        try:
            return cls(**kw)
        except ThresholdsError as e:
            raise ThresholdsError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> TargetRules:
        """Read a thresholds JSON (``hybridgl calibrate``'s output, or ``{"rules": {...}}``
        written by hand, or the rules object alone).

        Raises:
            ThresholdsError: missing, too large, not JSON, or bad values (the message names
                the file).
        """
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError as e:
            raise ThresholdsError(f"{p}: cannot read thresholds file: {e.strerror}") from None
        if size > MAX_THRESHOLDS_BYTES:
            raise ThresholdsError(
                f"{p}: thresholds file is {size} bytes, more than {MAX_THRESHOLDS_BYTES}"
            )
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ThresholdsError(f"{p}: not a JSON thresholds file: {e}") from None
        if isinstance(data, Mapping) and "rules" in data:
            data = data["rules"]
        return cls.from_dict(data, str(p))


def load_thresholds(value: TargetRules | str | Path | Mapping[str, Any] | None) -> TargetRules:
    """``thresholds=`` as given: rules, a path to a JSON, a dict, or None (the defaults)."""
    if value is None:
        return TargetRules()
    if isinstance(value, TargetRules):
        return value
    if isinstance(value, (str, Path)):
        return TargetRules.load(value)
    if isinstance(value, Mapping):
        return TargetRules.from_dict(value)
    raise TypeError(f"thresholds must be TargetRules, a path or a dict, got {type(value).__name__}")


def check_mode(targets: Any) -> str:
    """``targets`` if it is one of :data:`TARGET_MODES`, else ValueError."""
    if not isinstance(targets, str) or targets not in TARGET_MODES:
        raise ValueError(f"targets must be one of {list(TARGET_MODES)}, got {targets!r}")
    return targets


def wants_many(number_cues: Sequence[str]) -> bool:
    """``targets="auto"``: several targets when any number cue fired on the parse."""
    return len(number_cues) > 0


def no_target_check(
    cosine: float,
    contrast: Mapping[str, float],
    floor: float,
    contrast_margin: float,
) -> tuple[bool, str]:
    """Whether the best region is what the phrase names.

    Args:
        cosine: ``cos(best region, phrase)`` (the phrase embedding of METHOD.md section 4).
        contrast: ``cos(best region, prompt)`` per contrast prompt.
        floor: the absolute floor of ``cosine``.
        contrast_margin: the least ``cosine - max(contrast)``.

    Returns:
        ``(found, rule)``: ``(False, "below_floor")`` when ``cosine < floor`` or is not
        finite; ``(False, "contrast")`` when ``cosine - max(contrast) < contrast_margin``;
        else ``(True, "passed")``. No contrast prompt: only the floor applies.
    """
    if not math.isfinite(cosine) or cosine < floor:
        return False, "below_floor"
    finite = [v for v in contrast.values() if math.isfinite(v)]
    if finite and cosine - max(finite) < contrast_margin:
        return False, "contrast"
    return True, "passed"


def eligible_targets(
    first: int,
    candidates: Sequence[int],
    scores: Sequence[float],
    cosines: Sequence[float],
    margin: float | None,
    cosine_margin: float,
) -> list[int]:
    """Proposals that qualify as targets, best first.

    ``first`` (the answer of ``targets="one"``) always comes first. Another candidate ``j``
    qualifies when ``scores[j] >= scores[first] - margin`` (skipped when ``margin`` is
    None) and ``cosines[j] >= cosines[first] - cosine_margin``; qualifying candidates follow
    in decreasing score (ties: the order of ``candidates``).

    Args:
        first: the best proposal's index; must be in ``candidates``.
        candidates: proposal indices considered.
        scores: their target scores, aligned with ``candidates``.
        cosines: their phrase cosines, aligned with ``candidates``.
        margin: score margin, or None for none.
        cosine_margin: cosine margin.

    Returns:
        Proposal indices.
    """
    if not (len(candidates) == len(scores) == len(cosines)):
        raise ValueError("candidates, scores and cosines differ in length")
    pos = {int(i): k for k, i in enumerate(candidates)}
    if first not in pos:
        raise ValueError(f"the best proposal {first} is not among the candidates")
    s0, c0 = float(scores[pos[first]]), float(cosines[pos[first]])
    rest = []
    for k, i in enumerate(candidates):
        if int(i) == first:
            continue
        if margin is not None and not float(scores[k]) >= s0 - margin:
            continue
        if not float(cosines[k]) >= c0 - cosine_margin:
            continue
        rest.append((-float(scores[k]), k, int(i)))
    rest.sort()
    return [first] + [i for _, _, i in rest]


def overlap_counts(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise intersections ``(K, K)`` and areas ``(K,)`` of ``(K, H, W)`` bool masks."""
    if masks.ndim != 3:
        raise ValueError(f"expected (K, H, W) masks, got {masks.shape}")
    flat = masks.reshape(masks.shape[0], -1).astype(np.float64)
    inter = np.rint(flat @ flat.T).astype(np.int64)
    return inter, np.diag(inter).copy()


def dedupe(
    inter: np.ndarray,
    areas: np.ndarray,
    dedup_iou: float,
    containment: float,
    limit: int,
) -> list[int]:
    """Greedy de-duplication of ranked masks (position 0 is the best and always kept).

    Position ``k`` is kept unless, for some kept ``m``, ``IoU(k, m) > dedup_iou`` or
    ``inter(k, m) / area(k) > containment`` (a part of a kept mask); an empty mask
    (``area == 0``) is never kept after the first. At most ``limit`` positions are kept.

    Args:
        inter: ``(K, K)`` pairwise intersections (:func:`overlap_counts`).
        areas: ``(K,)`` areas.
        dedup_iou: IoU above which two masks are the same object.
        containment: fraction of a mask inside a kept one above which it is a part.
        limit: the most positions kept (>= 1).

    Returns:
        Kept positions in rank order.
    """
    k_all = int(areas.shape[0])
    if k_all == 0:
        return []
    kept = [0]
    for k in range(1, k_all):
        if len(kept) >= limit:
            break
        ak = int(areas[k])
        if ak == 0:
            continue
        dup = False
        for m in kept:
            i = int(inter[k, m])
            union = ak + int(areas[m]) - i
            if (union > 0 and i / union > dedup_iou) or i / ak > containment:
                dup = True
                break
        if not dup:
            kept.append(k)
    return kept


def target_kwargs(
    targets: str = "one", thresholds: TargetRules | str | Path | Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``predict`` / ``predict_many`` / ``score`` for a target mode.

    Empty for the default (``"one"``, no thresholds), so that faces calling a segmenter
    double that predates the option keep working.
    """
    out: dict[str, Any] = {}
    if check_mode(targets) != "one":
        out["targets"] = targets
    if thresholds is not None:
        out["thresholds"] = load_thresholds(thresholds)
    return out

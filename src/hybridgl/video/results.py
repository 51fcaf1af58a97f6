"""Per-frame results of the video method and their one record shape.

A :class:`FrameResult` holds one :class:`ObjectResult` per phrase. Its records
(:meth:`FrameResult.to_records`) are :meth:`hybridgl.types.Prediction.to_dict` -- the one
record shape of the package: COCO RLE mask, box, score, ``found`` -- with the video keys
added: ``frame`` (index in the source), ``time`` (seconds or null), ``object_id``, ``state``
(``keyframe``, ``tracked``, ``regrounded``, ``absent``), ``present``, ``presence`` (the
tracker's object score), ``cosine`` (of the method's choice, on grounded frames), ``checked``
(the frame was re-grounded and the tracked mask kept), ``reason`` (why absent) and
``keyframe`` (true on the frame the phrases were first grounded on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridgl.types import Parse, Prediction

__all__ = ["FrameResult", "ObjectResult", "pack", "unpack"]


@dataclass
class ObjectResult:
    """One phrase on one frame.

    Attributes:
        object_id: 1, 2, ... in the order of the phrases.
        expression: the phrase.
        state: ``keyframe``, ``tracked``, ``regrounded`` or ``absent``.
        present: False for ``absent`` (the mask is then empty).
        mask: ``(H, W)`` bool at the frame's resolution.
        score: the method's score on grounded frames, the tracker's presence otherwise.
        presence: the tracker's object-presence probability (None before it tracks).
        cosine: the cosine of the method's choice with the phrase (grounded frames).
        prediction: the image method's prediction (grounded frames), with its candidates.
        checked: re-grounded and the tracked mask kept.
        reason: why absent: ``no_proposal``, ``cosine`` (the method) or ``tracker``.
    """

    object_id: int
    expression: str
    state: str
    present: bool
    mask: np.ndarray
    score: float | None = None
    presence: float | None = None
    cosine: float | None = None
    prediction: Prediction | None = None
    checked: bool = False
    reason: str | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        from hybridgl.masks import mask_to_box

        return mask_to_box(self.mask)

    def to_prediction(self) -> Prediction:
        """The result as the image method's :class:`~hybridgl.types.Prediction`."""
        if self.prediction is not None and self.present:
            return self.prediction
        parse = (
            self.prediction.parse
            if self.prediction is not None
            else Parse(self.expression, self.expression.lower(), self.expression.lower())
        )
        return Prediction(
            mask=self.mask,
            box=self.box,
            score=float(self.score) if self.score is not None else float("nan"),
            found=self.present,
            candidates=[],
            pure_index=None,
            index=None,
            parse=parse,
        )


@dataclass
class FrameResult:
    """Every phrase on one frame: ``frame`` (source index), ``position`` (among the selected
    frames), ``time`` (seconds or None), the frame's size and one result per phrase."""

    frame: int
    position: int
    time: float | None
    height: int
    width: int
    objects: list[ObjectResult]
    timings: dict[str, float] = field(default_factory=dict)
    #: the frame the phrases were first grounded on (its objects are ``keyframe`` or ``absent``)
    is_keyframe: bool = False

    def to_records(self, candidates: bool = False) -> list[dict[str, Any]]:
        """One JSON-ready record per phrase (the module docstring lists the keys)."""
        out = []
        for o in self.objects:
            rec = o.to_prediction().to_dict(candidates=candidates)
            rec["timings"] = {k: float(v) for k, v in self.timings.items()}
            rec.update(
                frame=int(self.frame),
                time=None if self.time is None else float(self.time),
                object_id=int(o.object_id),
                state=o.state,
                present=bool(o.present),
                presence=None if o.presence is None else float(o.presence),
                cosine=None if o.cosine is None else float(o.cosine),
                checked=bool(o.checked),
                reason=o.reason,
                keyframe=bool(self.is_keyframe),
            )
            out.append(rec)
        return out

    def to_supervision(self) -> Any:
        """The present objects as ``supervision.Detections`` with ``tracker_id`` = object id
        (``hybridgl[supervision]``); ``class_id`` is the object id too, ``data`` holds the
        ``expression`` and ``state`` of each."""
        try:
            import supervision as sv
        except ImportError:
            raise ImportError(
                'to_supervision needs supervision: pip install "hybridgl[supervision]"'
            ) from None
        present = [o for o in self.objects if o.present and o.mask.any()]
        if not present:
            return sv.Detections.empty()
        boxes = np.array([o.box for o in present], dtype=np.float32)
        boxes[:, 2:] += boxes[:, :2]
        return sv.Detections(
            xyxy=boxes,
            mask=np.stack([o.mask for o in present]),
            confidence=np.array(
                [np.nan if o.score is None else o.score for o in present], dtype=np.float32
            ),
            class_id=np.array([o.object_id for o in present]),
            tracker_id=np.array([o.object_id for o in present]),
            data={
                "expression": np.array([o.expression for o in present]),
                "state": np.array([o.state for o in present]),
            },
        )


_EMPTY = np.zeros((0, 0), dtype=bool)


def pack(result: FrameResult) -> FrameResult:
    """Masks to COCO RLE in place (a frame held for later costs bytes, not megabytes)."""
    from hybridgl.masks import mask_to_rle

    for o in result.objects:
        rle = mask_to_rle(o.mask)
        o.mask = _EMPTY
        if o.prediction is not None:
            o.prediction.mask = _EMPTY
        o.__dict__["_rle"] = rle
    return result


def unpack(result: FrameResult) -> FrameResult:
    """Undo :func:`pack`."""
    from hybridgl.masks import rle_to_mask

    for o in result.objects:
        rle = o.__dict__.pop("_rle", None)
        if rle is None:
            continue
        o.mask = rle_to_mask(rle)
        if o.prediction is not None:
            o.prediction.mask = o.mask
    return result

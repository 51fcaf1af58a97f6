"""Segment an object through a volume: ground on a key slice, then follow it slice by slice.

:func:`segment_volume` treats the slices along ``axis`` as a sequence:

1. **Key slice.** Given, or chosen as the slice where the method's own score for the
   phrase is highest among ``sample_slices`` evenly spaced slices.
2. **Propagation**, from the key slice outward in both directions, one slice at a time:

   * with a ``tracker`` (a name of :data:`hybridgl.video.tracker.TRACKERS`: the video
     path's SAM 2.1 / EdgeTAM tracker with slices as frames, a video ``Tracker``, or
     anything implementing :class:`SliceTracker`; :mod:`hybridgl.medical.tracking`), the
     tracker's mask is taken; it counts as absent when empty or scored below
     ``tracker_min_score`` (default: the tracker's own ``min_score``, the video path's
     presence threshold for video trackers). Every ``reground_every`` slices the phrase
     is grounded again and, when one of its candidates overlaps the tracked mask (IoU >=
     ``min_iou``), the tracker is re-anchored on that candidate (against drift). A
     tracker name that cannot be built because ``transformers`` is missing falls back to
     per-slice grounding (``tracker_fallback`` in the result says why);
   * without one (the fallback that always works), the phrase is grounded on the slice
     and, among the method's ``top_k`` candidates, the one that overlaps the previous
     slice's mask most is taken when that IoU is at least ``min_iou``.

   The first slice where the object is absent ends that direction: the extent along the
   axis is found from the data, not assumed.

Memory: the label volume (uint8, one byte per voxel) plus one slice's work at a time;
no per-slice state is kept (``on_slice`` receives each slice's image and mask to write
overlays as it goes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridgl.limits import DEFAULT_MAX_PIXELS
from hybridgl.medical.tracking import SliceTracker, resolve_tracker
from hybridgl.medical.volume import Volume, check_axis
from hybridgl.medical.window import Window

__all__ = ["SliceRecord", "SliceTracker", "VolumeResult", "mask_iou", "segment_volume"]


#: ``proposals(index, image) -> (N, H, W) masks`` or None for the segmenter's own.
ProposalSource = Callable[[int, np.ndarray], Any]
#: ``on_slice(record, image, mask)``: called for every slice visited, in visiting order.
SliceCallback = Callable[["SliceRecord", np.ndarray, np.ndarray], None]


@dataclass
class SliceRecord:
    """What happened on one slice.

    Attributes:
        index: the slice index along the axis.
        found: the object is on this slice.
        source: ``key``, ``grounding``, ``tracker``, ``regrounded`` or ``absent``.
        area: mask pixels.
        score: the method's score (grounding) or the tracker's confidence.
        iou_previous: IoU with the previous slice's mask (None on the key slice).
        seconds: time spent on the slice.
    """

    index: int
    found: bool
    source: str
    area: int = 0
    score: float | None = None
    iou_previous: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "found": self.found,
            "source": self.source,
            "area": self.area,
            "score": None
            if self.score is None or not np.isfinite(self.score)
            else float(self.score),
            "iou_previous": self.iou_previous,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class VolumeResult:
    """The object through the volume.

    Attributes:
        labels: ``(I, J, K)`` uint8, 1 inside the object (the volume's layout and affine).
        expression: the phrase.
        axis: the axis slices were taken along.
        key_slice: the key slice (None when no sampled slice had any proposal).
        key_scores: the method's score on each sampled slice (empty when given).
        window: the window the slices were shown through (None for colour data).
        slices: one record per visited slice, sorted by index.
        voxel_volume_mm3: the volume of one voxel.
        tracker: the tracker's name (None: per-slice grounding).
        timings: seconds (``key``, ``propagate``, ``total``).
        tracker_fallback: why a requested tracker was not used (per-slice grounding was).
    """

    labels: np.ndarray
    expression: str
    axis: int
    key_slice: int | None
    key_scores: dict[int, float]
    window: Window | None
    slices: list[SliceRecord]
    voxel_volume_mm3: float
    tracker: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    tracker_fallback: str | None = None

    @property
    def found(self) -> bool:
        return any(r.found for r in self.slices)

    @property
    def extent(self) -> tuple[int, int] | None:
        """First and last slice (inclusive) holding the object, or None."""
        found = [r.index for r in self.slices if r.found]
        return (min(found), max(found)) if found else None

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.labels))

    @property
    def volume_ml(self) -> float:
        """The object's volume in millilitres (voxels x voxel volume; 1 mL = 1000 mm^3)."""
        return self.voxels * self.voxel_volume_mm3 / 1000.0

    def to_dict(self) -> dict[str, Any]:
        extent = self.extent
        return {
            "expression": self.expression,
            "found": self.found,
            "axis": self.axis,
            "key_slice": self.key_slice,
            "key_scores": {str(k): float(v) for k, v in sorted(self.key_scores.items())},
            "extent": list(extent) if extent else None,
            "voxels": self.voxels,
            "voxel_volume_mm3": self.voxel_volume_mm3,
            "volume_ml": self.volume_ml,
            "window": self.window.to_dict() if self.window is not None else None,
            "tracker": self.tracker,
            "tracker_fallback": self.tracker_fallback,
            "slices": [r.to_dict() for r in self.slices],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else 0.0


class _Grounder:
    """Grounds the parsed phrase on one slice at a time (nothing kept between slices)."""

    def __init__(
        self,
        segmenter: Any,
        parse: Any,
        top_k: int,
        proposals: ProposalSource | None,
        max_pixels: int | None,
    ) -> None:
        self.seg, self.parse, self.top_k = segmenter, parse, top_k
        self.proposals, self.max_pixels = proposals, max_pixels

    def __call__(self, index: int, image: np.ndarray) -> tuple[Any, list[tuple[float, np.ndarray]]]:
        given = self.proposals(index, image) if self.proposals is not None else None
        state = self.seg.encode_image(image, given, max_pixels=self.max_pixels)
        pred = self.seg.score(state, self.parse, top_k=self.top_k)
        cands: list[tuple[float, np.ndarray]] = []
        if pred.found:
            for c in pred.candidates:
                s = c.final_score if c.final_score is not None else c.probability
                cands.append((float(s), state.input_mask(c.index)))
        return pred, cands


def _put(labels: np.ndarray, axis: int, index: int, plane: np.ndarray) -> None:
    where: list[Any] = [slice(None)] * 3
    where[axis] = index
    labels[tuple(where)] = plane


def segment_volume(
    segmenter: Any,
    volume: Volume,
    expression: str,
    *,
    axis: int = 2,
    keyslice: int | None = None,
    window: str | tuple[float, float] | Window | None = None,
    tracker: SliceTracker | str | Any = None,
    sample_slices: int = 8,
    top_k: int = 5,
    min_iou: float = 0.2,
    tracker_min_score: float | None = None,
    reground_every: int = 0,
    proposals: ProposalSource | None = None,
    on_slice: SliceCallback | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> VolumeResult:
    """Segment the object ``expression`` names through ``volume`` (module docstring).

    Args:
        segmenter: a :class:`~hybridgl.segmenter.Segmenter` (its public stages
            ``parse``, ``encode_image`` and ``score`` are used).
        volume: the scan (:func:`hybridgl.medical.read_volume`).
        expression: the phrase, e.g. ``"the liver"``.
        axis: slice along this voxel axis (2: the stored DICOM images).
        keyslice: the key slice index; None chooses it by score.
        window: the display window (:func:`hybridgl.medical.window.resolve_window`).
        tracker: None (ground every slice), a tracker name (:data:`hybridgl.video.tracker.
            TRACKERS`), a video ``Tracker`` or a :class:`SliceTracker`.
        sample_slices: slices scored to choose the key slice.
        top_k: candidates per slice considered when following the object.
        min_iou: overlap with the previous slice needed to count as the same object.
        tracker_min_score: tracker confidence below which the object counts as absent
            (None: the tracker's ``min_score``, else 0).
        reground_every: with a tracker, ground again every N slices (0: never).
        proposals: ``proposals(index, image)`` giving each slice's candidate masks
            instead of the segmenter's proposal model.
        on_slice: called with each visited slice's record, image and mask.
        max_pixels: the largest slice accepted.

    Returns:
        A :class:`VolumeResult`.
    """
    check_axis(axis)
    if not 0.0 <= min_iou <= 1.0:
        raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
    if sample_slices < 1 or top_k < 1 or reground_every < 0:
        raise ValueError("sample_slices and top_k must be >= 1 and reground_every >= 0")
    n = volume.num_slices(axis)
    if keyslice is not None and not 0 <= int(keyslice) < n:
        raise ValueError(f"keyslice {keyslice} is outside 0..{n - 1} along axis {axis}")
    tracker, fallback = resolve_tracker(tracker, segmenter)
    min_score = (
        float(tracker_min_score)
        if tracker_min_score is not None
        else float(getattr(tracker, "min_score", 0.0))
    )
    t_start = time.perf_counter()
    parse = segmenter.parse(expression)
    win = volume.resolve_window(window)
    ground = _Grounder(segmenter, parse, top_k, proposals, max_pixels)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    records: list[SliceRecord] = []

    def emit(rec: SliceRecord, image: np.ndarray, mask: np.ndarray) -> None:
        records.append(rec)
        if rec.found:
            _put(labels, axis, rec.index, volume.mask_to_plane(mask))
        if on_slice is not None:
            on_slice(rec, image, mask)

    # 1. the key slice
    key_scores: dict[int, float] = {}
    key_mask: np.ndarray | None = None
    key_image: np.ndarray | None = None
    key: int | None = None
    best = -np.inf
    t0 = time.perf_counter()
    candidates = (
        [int(keyslice)]
        if keyslice is not None
        else sorted({int(round(v)) for v in np.linspace(0, n - 1, min(sample_slices, n))})
    )
    for k in candidates:
        image = volume.slice_rgb(k, axis, win)
        pred, cands = ground(k, image)
        if not pred.found:
            continue
        if keyslice is None:
            key_scores[k] = float(pred.score)
        if key is None or float(pred.score) > best:
            best, key, key_mask, key_image = float(pred.score), k, pred.mask, image
    t_key = time.perf_counter() - t0
    if key is None or key_mask is None or key_image is None or not key_mask.any():
        timings = {"key": t_key, "propagate": 0.0, "total": time.perf_counter() - t_start}
        return VolumeResult(
            labels,
            expression,
            axis,
            None,
            key_scores,
            win,
            [],
            volume.voxel_volume_mm3,
            _name(tracker),
            timings,
            fallback,
        )
    emit(SliceRecord(key, True, "key", int(key_mask.sum()), best, None, t_key), key_image, key_mask)

    # 2. propagation, up then down
    t1 = time.perf_counter()
    for step in (1, -1):
        prev = key_mask
        if tracker is not None:
            tracker.start(key_image, key_mask, reverse=step < 0)
        k = key + step
        since = 0
        while 0 <= k < n:
            ts = time.perf_counter()
            image = volume.slice_rgb(k, axis, win)
            score: float | None
            if tracker is not None:
                mask, score = tracker.track(image)
                mask = np.asarray(mask, dtype=bool)
                source = "tracker"
                found = bool(mask.any()) and float(score) >= min_score
                since += 1
                if found and reground_every and since >= reground_every:
                    since = 0
                    _pred, cands = ground(k, image)
                    match = max(cands, key=lambda c: mask_iou(c[1], mask), default=None)
                    if match is not None and mask_iou(match[1], mask) >= min_iou:
                        mask, source = match[1], "regrounded"
                        if hasattr(tracker, "reseed"):
                            tracker.reseed(image, mask)
                        else:
                            tracker.start(image, mask, reverse=step < 0)
            else:
                _pred, cands = ground(k, image)
                match = max(cands, key=lambda c: mask_iou(c[1], prev), default=None)
                found = match is not None and mask_iou(match[1], prev) >= min_iou
                mask = match[1] if match is not None else np.zeros(image.shape[:2], dtype=bool)
                score = match[0] if match is not None else None
                source = "grounding"
            iou = mask_iou(mask, prev)
            if not found:
                emit(
                    SliceRecord(k, False, "absent", 0, score, iou, time.perf_counter() - ts),
                    image,
                    np.zeros(image.shape[:2], dtype=bool),
                )
                break
            emit(
                SliceRecord(k, True, source, int(mask.sum()), score, iou, time.perf_counter() - ts),
                image,
                mask,
            )
            prev = mask
            k += step
    records.sort(key=lambda r: r.index)
    t_end = time.perf_counter()
    timings = {"key": t_key, "propagate": t_end - t1, "total": t_end - t_start}
    return VolumeResult(
        labels,
        expression,
        axis,
        key,
        key_scores,
        win,
        records,
        volume.voxel_volume_mm3,
        _name(tracker),
        timings,
        fallback,
    )


def _name(tracker: Any) -> str | None:
    if tracker is None:
        return None
    return str(getattr(tracker, "name", None) or type(tracker).__name__)

"""The video path's trackers as slice trackers: slices are frames.

:func:`segment_volume` follows an object from the key slice outward with any
:class:`~hybridgl.medical.propagate.SliceTracker`. :class:`VideoSliceTracker` puts a video
:class:`~hybridgl.video.tracker.Tracker` (SAM 2.1 video, EdgeTAM: :mod:`hybridgl.video`)
behind that protocol, so a volume is tracked with the same model, the same streaming
session and the same bounded memory as a video:

* :meth:`VideoSliceTracker.start` opens a session in the direction of travel (``reverse``
  for the slices below the key slice) and seeds the object (id 1) on the first slice;
* :meth:`VideoSliceTracker.track` steps the session on the next slice and returns the
  object's mask and its presence score (SAM 2's object score through a sigmoid);
* :meth:`VideoSliceTracker.reseed` re-anchors the object on the slice just tracked (the
  video path's :meth:`~hybridgl.video.tracker.Tracker.reseed`: its memory is kept).

:func:`resolve_tracker` turns ``tracker=`` (None, a name of
:data:`hybridgl.video.tracker.TRACKERS`, a video ``Tracker`` or a ``SliceTracker``) into a
slice tracker. A name needs ``transformers`` (``hybridgl[transformers]``); without it the
volume is segmented by per-slice grounding (the fallback) and the reason is recorded.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["DEFAULT_PRESENCE", "SliceTracker", "VideoSliceTracker", "resolve_tracker"]

log = logging.getLogger(__name__)


@runtime_checkable
class SliceTracker(Protocol):
    """A sequence tracker: given a first frame and its mask, follows the object.

    Slices are frames. :meth:`start` (re)starts tracking from an image and a mask, the
    following images coming in ``reverse`` (decreasing slice index) or forward order;
    :meth:`track` returns the mask on the next image of the same direction and a
    confidence (higher is surer; :func:`segment_volume` treats an empty mask or one
    below ``tracker_min_score`` as "absent"). Images are ``(H, W, 3)`` uint8 windowed
    slices, masks ``(H, W)`` bool. Optional members: ``reseed(image, mask)`` re-anchors
    on the slice just tracked (else :meth:`start` is called again), ``min_score`` the
    default absence threshold, ``name`` the name recorded.
    """

    def start(self, image: np.ndarray, mask: np.ndarray, reverse: bool = False) -> None: ...

    def track(self, image: np.ndarray) -> tuple[np.ndarray, float]: ...


def _default_presence() -> float:
    """The video path's default presence threshold (one value for videos and volumes)."""
    from hybridgl.video.method import TrackOptions

    thr = TrackOptions().presence_threshold
    return 0.0 if thr is None else float(thr)


#: presence below which a tracked object counts as absent (the video path's default)
DEFAULT_PRESENCE = _default_presence()

_OBJECT = 1

#: trackers built by name, one per (segmenter, name): a worker running many volumes builds
#: each once (every volume starts its own sessions: nothing carries over)
_BUILT: dict[tuple[int, str], tuple[Any, Any]] = {}


def _ref(obj: Any) -> Any:
    import weakref

    try:
        return weakref.ref(obj)
    except TypeError:  # not weak-referenceable: keep it (and its tracker) for the process
        return lambda: obj


class VideoSliceTracker:
    """A video :class:`~hybridgl.video.tracker.Tracker` as a slice tracker (module docstring).

    Args:
        tracker: the video tracker (e.g. :func:`hybridgl.video.hf_trackers.build_tracker`).
        min_score: presence below which :func:`segment_volume` counts the object absent
            when its ``tracker_min_score`` is left to the tracker.
    """

    def __init__(self, tracker: Any, min_score: float = DEFAULT_PRESENCE) -> None:
        from hybridgl.video.tracker import Tracker

        if not isinstance(tracker, Tracker):
            raise TypeError(f"expected a video Tracker, got {type(tracker).__name__}")
        self.tracker = tracker
        self.min_score = float(min_score)
        self.name = str(getattr(tracker, "name", type(tracker).__name__))
        self._shape: tuple[int, int] | None = None

    def start(self, image: np.ndarray, mask: np.ndarray, reverse: bool = False) -> None:
        self.tracker.reset(reverse=reverse)
        self._shape = image.shape[:2]
        self.tracker.step(image, {_OBJECT: np.asarray(mask, dtype=bool)})

    def track(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        return self._answer(self.tracker.step(image), image.shape[:2])

    def reseed(self, image: np.ndarray, mask: np.ndarray) -> None:
        """Re-anchor on the slice just tracked (``image`` is that slice)."""
        self.tracker.reseed({_OBJECT: np.asarray(mask, dtype=bool)})

    @staticmethod
    def _answer(step: Any, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
        mask = step.masks.get(_OBJECT)
        if mask is None:
            return np.zeros(shape, dtype=bool), 0.0
        return np.asarray(mask, dtype=bool), float(step.presence.get(_OBJECT, 0.0))


def resolve_tracker(tracker: Any, segmenter: Any = None) -> tuple[Any, str | None]:
    """``tracker=`` of :func:`segment_volume` -> ``(slice tracker or None, fallback reason)``.

    None stays None (per-slice grounding). A name builds that video tracker on the
    segmenter's device (its weights resolved like the segmenter's; random weights under
    ``HYBRIDGL_RANDOM_WEIGHTS``); when ``transformers`` is missing the answer is
    ``(None, reason)``: per-slice grounding, with the reason logged and recorded. A video
    ``Tracker`` is wrapped in :class:`VideoSliceTracker`; a ``SliceTracker`` is used as is.

    Raises:
        ValueError: an unknown tracker name.
        TypeError: an object that is neither kind of tracker.
    """
    from hybridgl.video.tracker import Tracker, get_tracker_spec

    if tracker is None:
        return None, None
    if isinstance(tracker, str):
        get_tracker_spec(tracker)  # an unknown name is an error, not a fallback
        try:
            from hybridgl.video.hf_trackers import build_tracker
        except ImportError as e:
            reason = f"tracker {tracker!r} unavailable ({e}); per-slice grounding used"
            log.warning(reason)
            return None, reason
        for k in [k for k, (ref, _) in _BUILT.items() if ref() is None]:
            del _BUILT[k]  # their segmenter is gone: so go their trackers
        key = (id(segmenter), tracker)
        built = _BUILT.get(key)
        if built is None or built[0]() is not segmenter:
            try:
                model = build_tracker(
                    tracker,
                    device=getattr(segmenter, "device", None),
                    weights_dir=getattr(getattr(segmenter, "spec", None), "weights_dir", None),
                    dtype=getattr(segmenter, "dtype", None),  # as the video path: the spec's
                )
            except ImportError as e:
                reason = f"tracker {tracker!r} unavailable ({e}); per-slice grounding used"
                log.warning(reason)
                return None, reason
            built = (_ref(segmenter), model)
            _BUILT[key] = built
        return VideoSliceTracker(built[1]), None
    if isinstance(tracker, Tracker):
        return VideoSliceTracker(tracker), None
    if isinstance(tracker, SliceTracker):
        return tracker, None
    raise TypeError(
        "tracker must be a tracker name, a video Tracker or a SliceTracker (start, track), "
        f"got {type(tracker).__name__}"
    )

"""The video method: ground a phrase on a keyframe, track it, re-ground, report absence.

:class:`VideoSegmenter` combines a :class:`~hybridgl.video.grounding.Grounder` (the HybridGL
image method) and a :class:`~hybridgl.video.tracker.Tracker` (SAM 2.1 video, EdgeTAM):

1. **Keyframe**: every phrase is grounded on the keyframe (``keyframe``: a position, or
   ``"auto"``: the best of ``keyframe_candidates`` frames by the method's own score) and
   seeds the tracker: one object id per phrase (``targets="many"`` / ``"auto"``: per target,
   :mod:`hybridgl.video.many`). State ``keyframe``.
2. **Propagation** forward and, when the keyframe is not the first frame, backward
   (frames read again in chunks of ``backward_chunk``). State ``tracked``.
3. **Re-grounding** every ``reground_every`` frames with the tracked masks as extra
   proposals: re-seed (``regrounded``) when the object was lost or the method's choice
   disagrees (IoU < ``agree_iou``) and wins (by ``reseed_margin``); else ``tracked``.
4. **Absence**: no match on a re-grounding (no proposal, cosine rule) makes an object
   ``absent`` until a later re-grounding finds it; between re-groundings, the tracker's
   presence below ``presence_threshold`` or an empty mask.

docs/VIDEO.md has the rules in full. Results come as an iterator of :class:`FrameResult`, one per selected frame in frame order;
a stream source is answered frame by frame.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hybridgl.errors import VideoError
from hybridgl.targets import check_mode
from hybridgl.video.checkpoint import ResumePoint, SessionState, resume_from_masks
from hybridgl.video.grounding import Grounder, Grounding, HybridGLGrounder
from hybridgl.video.results import FrameResult, ObjectResult, pack, unpack
from hybridgl.video.sources import Frame, VideoSource, open_source
from hybridgl.video.tracker import Tracker, TrackStep

__all__ = ["STATES", "ResumePoint", "TrackOptions", "VideoSegmenter"]

STATES = ("keyframe", "tracked", "regrounded", "absent")


@dataclass(frozen=True)
class TrackOptions:
    """Options of the video method (docs/VIDEO.md has the rules and the defaults' reasons)."""

    keyframe: int | str = 0
    keyframe_candidates: int = 5
    reground_every: int = 15
    reseed_margin: float = 0.05
    agree_iou: float = 0.5
    presence_threshold: float | None = 0.5
    min_cosine: float | None = None
    top_k: int = 3
    guidance: bool = True
    backward_chunk: int = 32
    targets: str = "one"  # "many" / "auto": one object per target (hybridgl.video.many)

    def __post_init__(self) -> None:
        check_mode(self.targets)  # "one", "many" or "auto" (hybridgl.targets.TARGET_MODES)
        k = self.keyframe
        if not (k == "auto" or (isinstance(k, int) and not isinstance(k, bool) and k >= 0)):
            raise ValueError(f"keyframe must be a frame position >= 0 or 'auto', got {k!r}")
        if self.reground_every < 0:
            raise ValueError(f"reground_every must be >= 0 (0: never), got {self.reground_every}")
        if self.keyframe_candidates < 1 or self.backward_chunk < 1:
            raise ValueError("keyframe_candidates and backward_chunk must be >= 1")
        if not 0.0 <= self.agree_iou <= 1.0:
            raise ValueError(f"agree_iou must be in [0, 1], got {self.agree_iou}")


def _read(src: VideoSource, lo: int, hi: int) -> list[Frame]:
    """Selected frames at positions ``[lo, hi)`` of a re-readable source (the reader is
    closed at once: a video file is not left open)."""
    gen = src.frames()
    try:
        return list(itertools.islice(gen, lo, hi))
    finally:
        gen.close()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@dataclass
class _Object:
    oid: int
    expression: str
    seeded: bool = False
    lost: bool = False
    phrase: int = 0  # the phrase's position (targets many/auto: several objects share one)


class VideoSegmenter:
    """Follow what each phrase refers to through a video (see the module docstring).

    Args:
        grounder: a :class:`~hybridgl.video.grounding.Grounder`, or a segmenter (wrapped in
            :class:`~hybridgl.video.grounding.HybridGLGrounder` with the options' ``top_k``,
            ``guidance`` and ``min_cosine``).
        tracker: a :class:`~hybridgl.video.tracker.Tracker`.
        options: :class:`TrackOptions`; keyword arguments override its fields.
    """

    def __init__(
        self,
        grounder: Grounder | Any,
        tracker: Tracker,
        options: TrackOptions | None = None,
        **overrides: Any,
    ) -> None:
        opts = options or TrackOptions()
        self.options = replace(opts, **overrides) if overrides else opts
        if not hasattr(grounder, "ground"):
            grounder = HybridGLGrounder(
                grounder,
                top_k=self.options.top_k,
                guidance=self.options.guidance,
                min_cosine=self.options.min_cosine,
            )
        self.grounder = grounder
        self.tracker = tracker
        self._live: tuple[list[_Object], int, int, int] | None = None  # see snapshot()

    @classmethod
    def from_segmenter(
        cls,
        segmenter: Any,
        tracker: str | Tracker = "sam2.1_hiera_tiny",
        *,
        weights_dir: str | None = None,
        **options: Any,
    ) -> VideoSegmenter:
        """A video segmenter on an image :class:`~hybridgl.Segmenter` and a tracker by name
        (:data:`~hybridgl.video.tracker.TRACKERS`, built on the segmenter's device, its
        weights found like the segmenter's), or a ready tracker."""
        if isinstance(tracker, str):
            from hybridgl.video.hf_trackers import build_tracker

            tracker = build_tracker(tracker, device=getattr(segmenter, "device", None),
                                    weights_dir=weights_dir, dtype=getattr(segmenter, "dtype", None))  # fmt: skip
        return cls(segmenter, tracker, TrackOptions(**options))

    # ------------------------------------------------------------------ entry point
    def track(
        self,
        source: Any,
        expressions: Sequence[str],
        *,
        resume: ResumePoint | SessionState | None = None,
        **source_options: Any,
    ) -> Iterator[FrameResult]:
        """Per-frame results for ``expressions`` on ``source``, in frame order.

        Args:
            source: anything :func:`~hybridgl.video.sources.open_source` takes.
            expressions: one phrase per object (object ids 1, 2, ...).
            resume: continue an interrupted run after ``resume.frame``: from a
                :class:`~hybridgl.video.checkpoint.SessionState` (:meth:`snapshot`) exactly
                as the uninterrupted run; from a :class:`ResumePoint` the tracker restarts
                from the recorded masks (for trackers without ``get_state``).
            **source_options: ``stride``, ``max_frames``, ``start``, ``end``, ``max_pixels``,
                ``fps`` for :func:`~hybridgl.video.sources.open_source`.
        """
        if isinstance(expressions, str):
            raise TypeError("track expects a list of expressions, not a single string")
        exprs = [str(e) for e in expressions]
        if not exprs or any(not e.strip() for e in exprs):
            from hybridgl.errors import ExpressionError

            raise ExpressionError("every expression must be a non-empty string")
        src = open_source(source, **source_options)
        objects = [_Object(i + 1, e, phrase=i) for i, e in enumerate(exprs)]
        self._live = None
        if isinstance(resume, SessionState):
            yield from self._continue(src, objects, resume)
            return
        if resume is not None:
            yield from resume_from_masks(self, src, objects, resume)
            return
        key = self._keyframe_position(src, exprs)
        if key > 0:
            if not src.reopenable:
                raise VideoError(f"keyframe {key}: a stream can only start at its first frame")
            key_frame, grounded = self._ground_keyframe(src, key, exprs)
            yield from self._backward(src, objects, key, key_frame, grounded)
            frames = (f for p, f in enumerate(src.frames()) if p >= key)
            yield from self._forward(frames, objects, key, grounded)
        else:
            yield from self._forward(src.frames(), objects, 0, None)

    # ------------------------------------------------------------------ keyframe
    def _keyframe_position(self, src: VideoSource, exprs: list[str]) -> int:
        k = self.options.keyframe
        if k != "auto":
            return int(k)
        if not src.reopenable:
            raise VideoError("keyframe='auto' needs a file or a folder, not a stream")
        n = src.frame_count()
        if n is None:
            raise VideoError("keyframe='auto' needs a source whose frame count is known")
        want = sorted({round(i * (n - 1) / max(1, self.options.keyframe_candidates - 1))
                       for i in range(self.options.keyframe_candidates)})  # fmt: skip
        best, best_key = 0, (-1, -np.inf)
        for p, frame in enumerate(src.frames()):
            if p in want:
                gs = self._ground(frame.image, exprs)
                found = [g.score or 0.0 for g in gs if g.found]
                rank = (len(found), float(np.mean(found)) if found else -np.inf)
                if rank > best_key:
                    best, best_key = p, rank
            if p >= want[-1]:
                break
        return best

    def _ground_keyframe(
        self, src: VideoSource, key: int, exprs: list[str]
    ) -> tuple[Frame, list[Grounding]]:
        seen = 0
        for p, frame in enumerate(src.frames()):
            if p == key:
                return frame, self._ground(frame.image, exprs)
            seen = p + 1
        raise VideoError(f"keyframe {key} is past the last selected frame (there are {seen})")

    # ------------------------------------------------------------------ passes
    def _backward(
        self,
        src: VideoSource,
        objects: list[_Object],
        key: int,
        key_frame: Frame,
        grounded: list[Grounding],
    ) -> Iterator[FrameResult]:
        """Frames ``key-1 .. 0`` tracked backward; held packed (RLE), yielded in order."""
        self.tracker.reset(reverse=True)
        objs = [replace(o) for o in objects]
        self._start(key_frame, objs, grounded, key, key)
        held: list[FrameResult] = []
        chunk = self.options.backward_chunk
        hi = key
        while hi > 0:
            lo = max(0, hi - chunk)
            frames = _read(src, lo, hi)
            for p in range(hi - 1, lo - 1, -1):
                held.append(pack(self._frame(frames[p - lo], p, key, objs)))
            del frames
            hi = lo
        for r in reversed(held):
            yield unpack(r)

    def _forward(
        self,
        frames: Iterator[Frame],
        objects: list[_Object],
        key: int,
        grounded: list[Grounding] | None,
    ) -> Iterator[FrameResult]:
        self.tracker.reset(reverse=False)
        for offset, frame in enumerate(frames):
            p = key + offset
            if offset == 0:
                exprs = [o.expression for o in objects]
                gs = grounded or self._ground(frame.image, exprs)
                result = self._start(frame, objects, gs, p, key)
            else:
                result = self._frame(frame, p, key, objects)
            self._live = (objects, key, p, frame.index)
            yield result
        self._live = None

    def snapshot(self) -> SessionState | None:
        """The state after the forward frame just yielded by :meth:`track`, to continue
        from exactly (``track(..., resume=state)``); None during the backward pass, after
        the last frame, or when the tracker cannot save its session (no ``get_state``)."""
        get_state = getattr(self.tracker, "get_state", None)
        if self._live is None or get_state is None:
            return None
        objects, key, p, index = self._live
        flags = [(o.oid, o.seeded, o.lost) for o in objects]
        return SessionState(index, p, key, flags, get_state())

    def _continue(
        self, src: VideoSource, objects: list[_Object], state: SessionState
    ) -> Iterator[FrameResult]:
        if [o.oid for o in objects] != [o for o, _, _ in state.objects]:
            raise VideoError("cannot resume: the checkpoint has other objects")
        for o, (_, seeded, lost) in zip(objects, state.objects, strict=True):
            o.seeded, o.lost = seeded, lost
        self.tracker.set_state(state.tracker)  # type: ignore[attr-defined]
        key = state.keyframe_position
        for p, frame in enumerate(src.frames()):
            if p <= state.position:
                if p == state.position and frame.index != state.frame:
                    raise VideoError(f"cannot resume: frame {state.frame} is not at {p}")
                continue
            result = self._frame(frame, p, key, objects)
            self._live = (objects, key, p, frame.index)
            yield result
        self._live = None

    # ------------------------------------------------------------------ one frame
    def _start(
        self, frame: Frame, objects: list[_Object], gs: list[Grounding], p: int, key: int
    ) -> FrameResult:
        if self.options.targets != "one":
            from hybridgl.video.many import start_many

            return start_many(self, frame, objects, gs, p, key)
        t0 = time.perf_counter()
        seeds = {o.oid: g.mask for o, g in zip(objects, gs, strict=True) if g.found}
        step = self.tracker.step(frame.image, seeds)
        results = []
        for o, g in zip(objects, gs, strict=True):
            o.seeded, o.lost = g.found, not g.found
            if g.found:
                results.append(self._grounded(o, g, "keyframe", step))
            else:
                results.append(self._absent(o, frame, step, g))
        timings = {"frame": time.perf_counter() - t0, "tracker": step.seconds}
        return FrameResult(
            frame.index, p, frame.time, frame.height, frame.width, results, timings, True
        )

    def _frame(self, frame: Frame, p: int, key: int, objects: list[_Object]) -> FrameResult:
        t0 = time.perf_counter()
        opts = self.options
        step = self.tracker.step(frame.image)
        tracker_s = step.seconds
        regrounding = bool(opts.reground_every) and abs(p - key) % opts.reground_every == 0
        if not regrounding:
            results = [
                self._tracked(o, step) if o.seeded and not o.lost and self._present(o, step)
                else self._absent(o, frame, step, None)
                for o in objects
            ]  # fmt: skip
            return FrameResult(frame.index, p, frame.time, frame.height, frame.width, results,
                               {"frame": time.perf_counter() - t0, "tracker": tracker_s})  # fmt: skip
        if opts.targets != "one":
            from hybridgl.video.many import frame_many

            return frame_many(self, frame, p, objects, step, t0)
        tracked = [
            step.masks[o.oid] if o.seeded and self._present(o, step) else None for o in objects
        ]
        t1 = time.perf_counter()
        gs = self.grounder.ground(frame.image, [o.expression for o in objects], tracked)
        ground_s = time.perf_counter() - t1
        decisions: list[str] = []
        seeds: dict[int, np.ndarray] = {}
        for o, g, m in zip(objects, gs, tracked, strict=True):
            if not g.found:
                decisions.append("absent")
                o.lost = True
            elif m is None or o.lost or not o.seeded:
                decisions.append("regrounded")
            elif _iou(g.mask, m) >= opts.agree_iou:
                decisions.append("tracked")
            elif g.tracked_score is None or (
                g.score is not None and g.score - g.tracked_score > opts.reseed_margin
            ):
                decisions.append("regrounded")
            else:
                decisions.append("tracked")
            if decisions[-1] == "regrounded":
                seeds[o.oid] = g.mask
                o.seeded, o.lost = True, False
        if seeds:
            step = self.tracker.reseed(seeds)
            tracker_s += step.seconds
        results = []
        for o, g, d in zip(objects, gs, decisions, strict=True):
            if d == "regrounded":
                results.append(self._grounded(o, g, "regrounded", step))
            elif d == "tracked":
                results.append(self._tracked(o, step, checked=g))
            else:
                results.append(self._absent(o, frame, step, g))
        timings = {"frame": time.perf_counter() - t0, "tracker": tracker_s, "ground": ground_s}
        return FrameResult(frame.index, p, frame.time, frame.height, frame.width, results, timings)

    def _ground(self, image: np.ndarray, exprs: list[str]) -> list[Grounding]:
        if self.options.targets == "one":
            return self.grounder.ground(image, exprs)  # a "one" grounder needs no keyword
        return self.grounder.ground(image, exprs, None, targets=self.options.targets)

    def _present(self, o: _Object, step: TrackStep) -> bool:
        m = step.masks.get(o.oid)
        if m is None or not m.any():
            return False
        thr = self.options.presence_threshold
        return thr is None or step.presence.get(o.oid, 0.0) >= thr

    @staticmethod
    def _grounded(o: _Object, g: Grounding, state: str, step: TrackStep) -> ObjectResult:
        return ObjectResult(
            o.oid, o.expression, state, True, g.mask, g.score, step.presence.get(o.oid),
            g.cosine, g.prediction,
        )  # fmt: skip

    @staticmethod
    def _tracked(o: _Object, step: TrackStep, checked: Grounding | None = None) -> ObjectResult:
        return ObjectResult(
            o.oid, o.expression, "tracked", True, step.masks[o.oid], step.presence.get(o.oid),
            step.presence.get(o.oid), checked.cosine if checked else None, None,
            checked=checked is not None,
        )  # fmt: skip

    @staticmethod
    def _absent(o: _Object, frame: Frame, step: TrackStep, g: Grounding | None) -> ObjectResult:
        empty = np.zeros((frame.height, frame.width), dtype=bool)
        return ObjectResult(
            o.oid, o.expression, "absent", False, empty, None, step.presence.get(o.oid),
            g.cosine if g else None, g.prediction if g else None,
            reason=(g.reason if g else "tracker"),
        )  # fmt: skip

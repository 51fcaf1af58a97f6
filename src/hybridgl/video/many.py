"""``targets="many"`` / ``"auto"`` on the video path: one tracker object per target of each
phrase.

On the keyframe the image method answers each phrase with every target it selects
(``predict(..., targets=mode)``, :mod:`hybridgl.targets`; with ``"auto"`` a phrase that
names one object has at most one target, so it gets one object as with ``"one"``, and a
phrase that names several gets one per target); each target becomes one tracker
object with its own id (ids 1, 2, ... in the order of the phrases, then of the targets,
best first). A phrase with no target on the keyframe gets one object that is ``absent``
(reason ``no_target``, ``no_proposal`` or ``cosine``) until a re-grounding finds it.

Re-grounding asks the method for the phrase's targets again (in the run's mode) and matches them to the
phrase's objects: an object whose tracked mask overlaps a target (IoU at least
``agree_iou``, the best unused target first) keeps its mask (``tracked``, checked); the
objects left (lost, never found, or whose mask matches no target) are re-seeded from the
targets left, best first (``regrounded``); objects still without a target are ``absent``
and lost until a later re-grounding. A target beyond the phrase's objects starts no new
object (the object ids are fixed on the keyframe).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridgl.video.grounding import Grounding
from hybridgl.video.results import FrameResult, ObjectResult

if TYPE_CHECKING:
    from hybridgl.video.sources import Frame

VideoSegmenter = Any  # hybridgl.video.method.VideoSegmenter (which imports this module)

__all__ = ["frame_many", "start_many"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def new(template: Any, oid: int, expression: str, phrase: int) -> Any:
    """A fresh object record like ``template`` (not found, not lost)."""
    return replace(template, oid=oid, expression=expression, phrase=phrase, seeded=False,
                   lost=False)  # fmt: skip


def start_many(
    vs: VideoSegmenter, frame: Frame, objects: list[Any], gs: list[Grounding], p: int, key: int
) -> FrameResult:
    """The keyframe: the objects of every phrase's targets replace ``objects`` (in place)."""
    t0 = time.perf_counter()
    template = objects[0]  # the method's object record (one per phrase before the keyframe)
    phrases = [o.expression for o in objects]
    made: list[Any] = []
    per_object: list[Grounding] = []
    for i, (expr, g) in enumerate(zip(phrases, gs, strict=True)):
        for t in (g.targets or []) if g.found else []:
            made.append(new(template, len(made) + 1, expr, i))
            per_object.append(t)
        if not g.found or not g.targets:
            made.append(new(template, len(made) + 1, expr, i))
            per_object.append(g)
    objects[:] = made
    seeds = {o.oid: g.mask for o, g in zip(objects, per_object, strict=True) if g.found}
    step = vs.tracker.step(frame.image, seeds)
    results = []
    for o, g in zip(objects, per_object, strict=True):
        o.seeded, o.lost = g.found, not g.found
        results.append(vs._grounded(o, g, "keyframe", step) if g.found
                       else vs._absent(o, frame, step, g))  # fmt: skip
    timings = {"frame": time.perf_counter() - t0, "tracker": step.seconds}
    return FrameResult(frame.index, p, frame.time, frame.height, frame.width, results,
                       timings, True)  # fmt: skip


def frame_many(
    vs: VideoSegmenter, frame: Frame, p: int, objects: list[Any], step: Any, t0: float
) -> FrameResult:
    """A re-grounding frame (the tracker has stepped): match targets to objects."""
    opts = vs.options
    phrases: dict[int, list[Any]] = {}
    for o in objects:
        phrases.setdefault(o.phrase, []).append(o)
    exprs = [group[0].expression for _, group in sorted(phrases.items())]
    t1 = time.perf_counter()
    gs = vs.grounder.ground(frame.image, exprs, None, targets=opts.targets)
    ground_s = time.perf_counter() - t1
    decision: dict[int, tuple[str, Grounding]] = {}
    seeds: dict[int, np.ndarray] = {}
    for (_, group), g in zip(sorted(phrases.items()), gs, strict=True):
        free = list(g.targets or []) if g.found else []
        waiting = []
        for o in group:
            m = step.masks.get(o.oid) if o.seeded and not o.lost and vs._present(o, step) else None
            best = max(free, key=lambda t: _iou(t.mask, m), default=None) if m is not None else None
            if best is not None and m is not None and _iou(best.mask, m) >= opts.agree_iou:
                free = [t for t in free if t is not best]  # by identity (masks are arrays)
                decision[o.oid] = ("tracked", best)
            else:
                waiting.append(o)
        for o in waiting:
            if free:
                t = free.pop(0)
                decision[o.oid] = ("regrounded", t)
                seeds[o.oid] = t.mask
                o.seeded, o.lost = True, False
            else:
                decision[o.oid] = ("absent", g)
                o.lost = True
    tracker_s = step.seconds
    if seeds:
        step = vs.tracker.reseed(seeds)
        tracker_s += step.seconds
    results: list[ObjectResult] = []
    for o in objects:
        state, g = decision[o.oid]
        if state == "regrounded":
            results.append(vs._grounded(o, g, "regrounded", step))
        elif state == "tracked":
            results.append(vs._tracked(o, step, checked=g))
        else:
            if g.found:  # the phrase's targets went to its other objects
                g = Grounding(False, np.zeros_like(g.mask), reason="no_target")
            results.append(vs._absent(o, frame, step, g))
    timings = {"frame": time.perf_counter() - t0, "tracker": tracker_s, "ground": ground_s}
    return FrameResult(frame.index, p, frame.time, frame.height, frame.width, results, timings)

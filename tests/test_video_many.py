"""``targets="many"`` on the video path: one tracker object per target on the keyframe, a
phrase without a target absent until a re-grounding finds it, targets matched to objects on
re-grounding; ``"one"`` unchanged. Scripted tracker and grounder (tests/test_video_method.py);
every expected id and state is worked out by hand from docs/VIDEO.md."""

from __future__ import annotations

import numpy as np
import pytest
from test_video_method import ListSource, S, ScriptedTracker, col, frames

from hybridgl.video.grounding import Grounding
from hybridgl.video.method import TrackOptions, VideoSegmenter


def many(*cols, score=0.5):
    """A phrase's answer with one target per column (best first); none: not found."""
    targets = [Grounding(True, col(a), score, 0.3) for a in cols]
    if not targets:
        return Grounding(False, np.zeros((S, S), bool), reason="no_target", targets=[])
    return Grounding(True, targets[0].mask, score, 0.3, targets=targets)


class ManyGrounder:
    """``script[pos][phrase index]`` with ``targets="many"``; "one" is refused (not used)."""

    def __init__(self, script):
        self.script = script
        self.calls: list[tuple[int, str]] = []

    def ground(self, image, expressions, tracked=None, targets="one"):
        pos = int(image[0, 0, 0])
        self.calls.append((pos, targets))
        assert targets == "many" and tracked is None
        return [self.script[pos][i] for i in range(len(expressions))]


def table(results):
    return [[(o.object_id, o.expression, o.state, o.reason) for o in r.objects] for r in results]


def test_one_object_per_target_and_absent_until_found():
    script = {
        0: [many(1, 4), many()],  # two dogs; no cat on the keyframe
        2: [many(4, 1), many(6)],  # both dogs again (other order); the cat appears
        4: [many(1), many()],  # one dog left; the cat is gone
    }
    g = ManyGrounder(script)
    vs = VideoSegmenter(g, ScriptedTracker(), TrackOptions(reground_every=2, targets="many"))
    out = list(vs.track(ListSource(frames(5)), ["the dogs", "the cat"]))
    assert g.calls == [(0, "many"), (2, "many"), (4, "many")]
    assert table(out) == [
        [(1, "the dogs", "keyframe", None), (2, "the dogs", "keyframe", None),
         (3, "the cat", "absent", "no_target")],
        [(1, "the dogs", "tracked", None), (2, "the dogs", "tracked", None),
         (3, "the cat", "absent", "tracker")],
        # each dog keeps its own target (matched by IoU, not by rank); the cat is seeded
        [(1, "the dogs", "tracked", None), (2, "the dogs", "tracked", None),
         (3, "the cat", "regrounded", None)],
        [(1, "the dogs", "tracked", None), (2, "the dogs", "tracked", None),
         (3, "the cat", "tracked", None)],
        # dog 2's mask matches no target and none is left: absent; the cat has no target
        [(1, "the dogs", "tracked", None), (2, "the dogs", "absent", "no_target"),
         (3, "the cat", "absent", "no_target")],
    ]  # fmt: skip
    assert np.array_equal(out[0].objects[1].mask, col(4))  # the second target, best first
    assert np.array_equal(out[2].objects[2].mask, col(6))
    assert [o.checked for o in out[2].objects] == [True, True, False]


def test_many_rejects_unknown_modes_and_one_is_unchanged():
    with pytest.raises(ValueError, match="targets"):
        TrackOptions(targets="some")
    # "one" calls the grounder exactly as before (no targets keyword)
    from test_video_method import ScriptedGrounder

    g = ScriptedGrounder()
    vs = VideoSegmenter(g, ScriptedTracker(), TrackOptions(reground_every=2))
    out = list(vs.track(ListSource(frames(3)), ["a", "b"]))
    assert [len(r.objects) for r in out] == [2, 2, 2]


@pytest.mark.slow
def test_the_image_methods_targets_reach_the_tracker(tiny_segmenter, coco_val):
    """With the real method (tiny random models), the keyframe's objects are exactly the
    targets of ``score(..., targets="many")`` on that frame (or one absent object)."""
    pytest.importorskip("transformers")
    from video_support import coco_clip

    from hybridgl.video.grounding import HybridGLGrounder

    clip, _ = coco_clip(coco_val, 3, size=(48, 64))
    grounder = HybridGLGrounder(tiny_segmenter)
    want = grounder.ground(clip[0], ["the things"], targets="many")[0]
    vs = VideoSegmenter(grounder, ScriptedTracker(), TrackOptions(targets="many"))
    first = next(iter(vs.track([np.ascontiguousarray(f) for f in clip], ["the things"])))
    n = len(want.targets or [])
    assert len(first.objects) == max(1, n)
    for o, t in zip(first.objects, want.targets or [], strict=False):
        assert o.state == "keyframe" and np.array_equal(o.mask, t.mask)

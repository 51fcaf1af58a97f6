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
    """``script[pos][phrase index]`` with ``targets=mode``; any other mode is refused."""

    def __init__(self, script, mode="many"):
        self.script = script
        self.mode = mode
        self.calls: list[tuple[int, str]] = []

    def ground(self, image, expressions, tracked=None, targets="one"):
        pos = int(image[0, 0, 0])
        self.calls.append((pos, targets))
        assert targets == self.mode and tracked is None
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


def test_auto_one_object_for_a_single_target_several_for_a_plural():
    """``targets="auto"``: the method answers "the dog" with at most one target and "the
    cats" with every cat (the image method's rule; scripted here): one object for the dog,
    one per cat, and re-grounding asks in ``"auto"`` again."""
    script = {
        0: [many(1), many(3, 5)],
        2: [many(1), many(5)],  # cat 2 (column 3) is not found: absent
        4: [many(), many(5, 3)],  # the dog is gone; cat 2 is back and re-seeded
    }
    g = ManyGrounder(script, mode="auto")
    vs = VideoSegmenter(g, ScriptedTracker(), TrackOptions(reground_every=2, targets="auto"))
    out = list(vs.track(ListSource(frames(5)), ["the dog", "the cats"]))
    assert g.calls == [(0, "auto"), (2, "auto"), (4, "auto")]
    assert table(out) == [
        [(1, "the dog", "keyframe", None), (2, "the cats", "keyframe", None),
         (3, "the cats", "keyframe", None)],
        [(1, "the dog", "tracked", None), (2, "the cats", "tracked", None),
         (3, "the cats", "tracked", None)],
        # cat 3 keeps column 5 (IoU 1); cat 2 (column 3) matches no target, none is left
        [(1, "the dog", "tracked", None), (2, "the cats", "absent", "no_target"),
         (3, "the cats", "tracked", None)],
        [(1, "the dog", "tracked", None), (2, "the cats", "absent", "tracker"),
         (3, "the cats", "tracked", None)],
        # no dog target; cat 3 matches column 5, the lost cat 2 takes column 3
        [(1, "the dog", "absent", "no_target"), (2, "the cats", "regrounded", None),
         (3, "the cats", "tracked", None)],
    ]  # fmt: skip
    assert [np.flatnonzero(o.mask[0]).tolist() for o in out[4].objects] == [[], [3], [5]]


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


class RecordingSegmenter:
    """Records the keywords of every ``score`` call (finds nothing)."""

    logit_scale = 1.0

    def __init__(self):
        self.config = type("Config", (), {"k1": 1})()
        self.calls: list[dict] = []

    def parse(self, expression):
        return expression

    def encode_image(self, image, proposals=None, max_pixels=None):
        return type("State", (), {"num_proposals": 0})()

    def score(self, state, parse, **kwargs):
        self.calls.append(kwargs)
        empty = np.zeros((S, S), bool)
        return type("Pred", (), {"found": False, "index": None, "mask": empty, "targets": [],
                                 "candidates": [], "score": None})()  # fmt: skip


def test_grounder_carries_the_thresholds_to_many_and_auto_only(tmp_path):
    import json

    from hybridgl.targets import TargetRules, ThresholdsError
    from hybridgl.video.grounding import HybridGLGrounder

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"rules": {"floor": 0.2, "margin": 0.1}}))
    seg = RecordingSegmenter()
    g = HybridGLGrounder(seg, top_k=2, thresholds=path)
    rules = TargetRules(floor=0.2, margin=0.1)
    assert g.thresholds == rules
    image = frames(1)[0]
    (one,) = g.ground(image, ["a"])
    (auto,) = g.ground(image, ["a"], targets="auto")
    assert seg.calls == [
        {"top_k": 2, "guidance": True},  # "one": exactly the keywords of before
        {"top_k": 2, "guidance": True, "targets": "auto", "thresholds": rules},
    ]
    assert one.reason == "no_proposal" and auto.reason == "no_proposal" and auto.targets == []
    assert HybridGLGrounder(RecordingSegmenter()).thresholds is None  # the rules' defaults
    with pytest.raises(ThresholdsError, match="floor"):
        HybridGLGrounder(seg, thresholds={"floor": "low"})
    with pytest.raises(ValueError, match="targets must be one of"):
        TrackOptions(targets="all")

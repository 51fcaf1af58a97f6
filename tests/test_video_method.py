"""The video method's rules (keyframe, tracking, re-grounding, absence, backward pass, resume)
with a scripted tracker and a scripted grounder: every expected state is worked out by hand
from the scripts and the rules of docs/VIDEO.md."""

from __future__ import annotations

import numpy as np
import pytest

from hybridgl.errors import VideoError
from hybridgl.video.grounding import Grounding
from hybridgl.video.method import ResumePoint, TrackOptions, VideoSegmenter
from hybridgl.video.sources import VideoSource
from hybridgl.video.tracker import Tracker, TrackStep

S = 8  # frames are S x S; pixel (0, 0) holds the frame's position


def col(a: int) -> np.ndarray:
    """A mask: column ``a``."""
    m = np.zeros((S, S), bool)
    m[:, a] = True
    return m


def frames(n: int) -> list[np.ndarray]:
    return [np.full((S, S, 3), i, np.uint8) for i in range(n)]


class ListSource(VideoSource):
    """A re-readable source of arrays (like a file or folder)."""

    reopenable = True

    def __init__(self, images):
        super().__init__()
        self.images = images

    def _raw(self):
        for i, im in enumerate(self.images):
            yield i, None, im

    def frame_count(self):
        return len(self.images)


class ScriptedTracker:
    """Repeats each object's last seed; ``presence[(pos, oid)]`` overrides its presence."""

    name = "scripted"
    memory_limit = 1

    def __init__(self, presence=None):
        self.presence = presence or {}
        self.log: list[tuple] = []
        self.current: dict[int, np.ndarray] = {}

    def reset(self, reverse=False):
        self.log.append(("reset", reverse))
        self.current = {}

    def _answer(self, seeded=()):
        out = TrackStep()
        for oid, m in self.current.items():
            out.masks[oid] = m
            out.presence[oid] = 1.0 if oid in seeded else self.presence.get((self.pos, oid), 0.9)
        return out

    def step(self, image, seeds=None):
        self.pos = int(image[0, 0, 0])
        self.log.append(("step", self.pos, tuple(sorted(seeds or {}))))
        self.current.update(seeds or {})
        return self._answer(seeds or {})

    def reseed(self, seeds):
        self.log.append(("reseed", self.pos, tuple(sorted(seeds))))
        self.current.update(seeds)
        return self._answer(seeds)

    def memory_frames(self):
        return len(self.current)


class ScriptedGrounder:
    """``script[(pos, phrase index)]`` = Grounding; default: found, column 1, score 0.5."""

    def __init__(self, script=None):
        self.script = script or {}
        self.calls: list[tuple[int, list]] = []

    def ground(self, image, expressions, tracked=None):
        pos = int(image[0, 0, 0])
        self.calls.append((pos, [t is not None for t in (tracked or [None] * len(expressions))]))
        return [
            self.script.get((pos, i), Grounding(True, col(1), 0.5, 0.3, 0.5))
            for i in range(len(expressions))
        ]


def found(a, score, tracked_score=None):
    return Grounding(True, col(a), score, 0.3, tracked_score)


NOT_FOUND = Grounding(False, np.zeros((S, S), bool), reason="no_proposal")


def states(results, oid=1):
    return [next(o.state for o in r.objects if o.object_id == oid) for r in results]


def test_reground_and_absence_rules_by_hand():
    grounder = ScriptedGrounder(
        {
            (3, 0): found(1, 0.6, 0.6),  # agrees with the tracked mask: kept
            (6, 0): found(2, 0.9, 0.5),  # disagrees, beats it by 0.4 > 0.05: re-seed
            (9, 0): NOT_FOUND,  # nothing matches: absent, lost
            (12, 0): found(3, 0.4),  # found again: re-acquired
            (15, 0): found(4, 0.52, 0.5),  # disagrees but by 0.02 <= 0.05: kept
        }
    )
    tracker = ScriptedTracker(presence={(4, 1): 0.2})  # the tracker loses it on frame 4
    vs = VideoSegmenter(grounder, tracker, TrackOptions(reground_every=3, reseed_margin=0.05))
    out = list(vs.track(frames(16), ["the thing"]))
    assert states(out) == [
        "keyframe", "tracked", "tracked", "tracked", "absent", "tracked", "regrounded",
        "tracked", "tracked", "absent", "absent", "absent", "regrounded", "tracked",
        "tracked", "tracked",
    ]  # fmt: skip
    objs = [r.objects[0] for r in out]
    assert [o.present for o in objs] == [s != "absent" for s in states(out)]
    assert objs[3].checked and objs[15].checked and not objs[1].checked
    assert objs[4].reason == "tracker" and objs[9].reason == "no_proposal"
    assert all(not o.mask.any() for o in objs if not o.present)
    assert np.array_equal(objs[6].mask, col(2)) and np.array_equal(objs[8].mask, col(2))
    assert np.array_equal(objs[13].mask, col(3)) and np.array_equal(objs[15].mask, col(3))
    assert [c[0] for c in grounder.calls] == [0, 3, 6, 9, 12, 15]
    reseeds = [e for e in tracker.log if e[0] == "reseed"]
    assert reseeds == [("reseed", 6, (1,)), ("reseed", 12, (1,))]
    assert [r.frame for r in out] == list(range(16))
    assert [r.is_keyframe for r in out] == [True] + [False] * 15


def test_presence_threshold_off_and_never_reground():
    tracker = ScriptedTracker(presence={(2, 1): 0.01})
    vs = VideoSegmenter(ScriptedGrounder(), tracker, reground_every=0, presence_threshold=None)
    assert states(list(vs.track(frames(4), ["x"]))) == ["keyframe"] + ["tracked"] * 3


def test_two_phrases_share_the_session_and_one_is_found_later():
    grounder = ScriptedGrounder({(0, 1): NOT_FOUND, (2, 1): found(5, 0.7)})
    tracker = ScriptedTracker()
    vs = VideoSegmenter(grounder, tracker, reground_every=2)
    out = list(vs.track(frames(5), ["a", "b"]))
    assert states(out, 1) == ["keyframe", "tracked", "tracked", "tracked", "tracked"]
    assert states(out, 2) == ["absent", "absent", "regrounded", "tracked", "tracked"]
    assert ("step", 0, (1,)) in tracker.log and ("reseed", 2, (2,)) in tracker.log
    # at frame 2 only object 1 had a tracked mask to offer the method
    assert grounder.calls[1] == (2, [True, False])
    recs = out[3].to_records()
    assert [(r["object_id"], r["expression"], r["state"]) for r in recs] == [
        (1, "a", "tracked"),
        (2, "b", "tracked"),
    ]


def test_keyframe_in_the_middle_tracks_backward_then_forward():
    tracker = ScriptedTracker()
    vs = VideoSegmenter(ScriptedGrounder(), tracker, keyframe=5, reground_every=0,
                        backward_chunk=2)  # fmt: skip
    out = list(vs.track(ListSource(frames(8)), ["x"]))
    assert [r.frame for r in out] == list(range(8))
    assert states(out) == ["tracked"] * 5 + ["keyframe", "tracked", "tracked"]
    steps = [e for e in tracker.log if e[0] != "reseed"]
    assert steps == [
        ("reset", True), ("step", 5, (1,)), ("step", 4, ()), ("step", 3, ()), ("step", 2, ()),
        ("step", 1, ()), ("step", 0, ()),
        ("reset", False), ("step", 5, (1,)), ("step", 6, ()), ("step", 7, ()),
    ]  # fmt: skip


def test_keyframe_auto_picks_the_best_scored_frame():
    # 9 frames, 3 candidates: positions 0, 4, 8
    grounder = ScriptedGrounder(
        {(0, 0): found(1, 0.2), (4, 0): found(1, 0.9), (8, 0): found(1, 0.5)}
    )
    vs = VideoSegmenter(grounder, ScriptedTracker(), keyframe="auto", keyframe_candidates=3,
                        reground_every=0)  # fmt: skip
    out = list(vs.track(ListSource(frames(9)), ["x"]))
    assert states(out).index("keyframe") == 4
    assert [c[0] for c in grounder.calls][:3] == [0, 4, 8]


def test_streams_start_at_their_first_frame():
    vs = VideoSegmenter(ScriptedGrounder(), ScriptedTracker(), keyframe=2)
    with pytest.raises(VideoError, match="stream"):
        list(vs.track(iter(frames(4)), ["x"]))
    vs = VideoSegmenter(ScriptedGrounder(), ScriptedTracker(), keyframe="auto")
    with pytest.raises(VideoError, match="auto"):
        list(vs.track(iter(frames(4)), ["x"]))
    with pytest.raises(TypeError):
        list(vs.track(iter(frames(4)), "x"))


def test_resume_restarts_the_tracker_from_recorded_masks():
    tracker = ScriptedTracker()
    grounder = ScriptedGrounder({(6, 0): found(2, 0.9, 0.5)})
    vs = VideoSegmenter(grounder, tracker, reground_every=3)
    point = ResumePoint(frame=4, keyframe=0, masks={1: col(6), 2: None})
    out = list(vs.track(frames(8), ["a", "b"], resume=point))
    assert [r.frame for r in out] == [5, 6, 7]
    assert ("step", 4, (1,)) in tracker.log
    assert states(out, 1) == ["tracked", "regrounded", "tracked"]  # 6: the method disagrees, by 0.4
    assert states(out, 2) == ["absent", "regrounded", "tracked"]  # lost until re-grounded
    assert np.array_equal(out[0].objects[0].mask, col(6))


def test_scripted_tracker_satisfies_the_protocol():
    assert isinstance(ScriptedTracker(), Tracker)


def test_keyframe_past_the_end():
    vs = VideoSegmenter(ScriptedGrounder(), ScriptedTracker(), keyframe=9)
    with pytest.raises(VideoError, match="past the last selected frame"):
        list(vs.track(ListSource(frames(3)), ["x"]))

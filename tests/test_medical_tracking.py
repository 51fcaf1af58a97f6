"""segment_volume with the video path's trackers (slices are frames): the mechanics with a
simple video Tracker, the fallback, and equality with the SAM 2.1 video model's own
propagation on tiny random weights."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
import pytest
from test_medical_volume import CheapSegmenter, ball_only, phantom

from hybridgl.medical.propagate import mask_iou, segment_volume
from hybridgl.medical.tracking import DEFAULT_PRESENCE, VideoSliceTracker, resolve_tracker
from hybridgl.video.tracker import Tracker, TrackStep


def bright(image: np.ndarray) -> list[np.ndarray]:
    """The connected regions brighter than the body (the ball and the rod, apart)."""
    count, lab = cv2.connectedComponents((image[:, :, 0] > 150).astype(np.uint8))
    return [lab == c for c in range(1, count)]


class RegionTracker:
    """A video Tracker (the protocol of hybridgl.video.tracker): object 1 is the bright
    region overlapping its previous mask most; presence 0 when none overlaps."""

    name = "regions"

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, bool]] = []  # (call, reverse, seeded)
        self.reverse = False
        self.prev: np.ndarray | None = None

    @property
    def memory_limit(self) -> int:
        return 1

    def memory_frames(self) -> int:
        return 1

    def reset(self, reverse: bool = False) -> None:
        self.reverse, self.prev = reverse, None
        self.calls.append(("reset", reverse, False))

    def step(self, image: np.ndarray, seeds: Mapping[int, np.ndarray] | None = None) -> TrackStep:
        self.calls.append(("step", self.reverse, bool(seeds)))
        if seeds:
            self.prev = np.asarray(seeds[1], bool)
            return TrackStep({1: self.prev}, {1: 1.0})
        assert self.prev is not None
        regions = bright(image)
        ious = [mask_iou(r, self.prev) for r in regions]
        if not ious or max(ious) == 0:
            return TrackStep({1: np.zeros(image.shape[:2], bool)}, {1: 0.0})
        self.prev = regions[int(np.argmax(ious))]
        return TrackStep({1: self.prev}, {1: 0.9})

    def reseed(self, seeds: Mapping[int, np.ndarray]) -> TrackStep:
        self.calls.append(("reseed", self.reverse, True))
        self.prev = np.asarray(seeds[1], bool)
        return TrackStep({1: self.prev}, {1: 1.0})


def test_video_tracker_follows_the_object_both_ways_and_finds_its_extent() -> None:
    vol, ball, _rod = phantom()
    tracker = RegionTracker()
    assert isinstance(tracker, Tracker)
    res = segment_volume(
        CheapSegmenter(), vol, "the ball", keyslice=3, window=(100, 400),
        proposals=ball_only, tracker=tracker,
    )  # fmt: skip
    np.testing.assert_array_equal(res.labels.astype(bool), ball)  # ball: slices 1..6
    assert res.extent == (1, 6) and res.tracker == "regions" and res.tracker_fallback is None
    assert [(r.index, r.source) for r in res.slices] == [
        (0, "absent"), (1, "tracker"), (2, "tracker"), (3, "key"),
        (4, "tracker"), (5, "tracker"), (6, "tracker"), (7, "absent"),
    ]  # fmt: skip
    # up from the key slice (seed on 3, then 4..7), then down (seed on 3, then 2..0)
    assert tracker.calls == [
        ("reset", False, False), ("step", False, True), *[("step", False, False)] * 4,
        ("reset", True, False), ("step", True, True), *[("step", True, False)] * 3,
    ]  # fmt: skip


def test_regrounding_reseeds_the_video_tracker_and_absence_uses_its_presence() -> None:
    vol, ball, _rod = phantom()
    tracker = RegionTracker()
    res = segment_volume(
        CheapSegmenter(), vol, "the ball", keyslice=3, window=(100, 400),
        proposals=ball_only, tracker=tracker, reground_every=2,
    )  # fmt: skip
    np.testing.assert_array_equal(res.labels.astype(bool), ball)
    assert [r.source for r in res.slices if r.index in (1, 5)] == ["regrounded"] * 2
    assert [c for c in tracker.calls if c[0] == "reseed"] == [
        ("reseed", False, True), ("reseed", True, True),
    ]  # fmt: skip
    # presence 0.9 on tracked slices: absent when the threshold is above it
    res = segment_volume(
        CheapSegmenter(), vol, "the ball", keyslice=3, window=(100, 400),
        proposals=ball_only, tracker=RegionTracker(), tracker_min_score=0.95,
    )  # fmt: skip
    assert res.extent == (3, 3) and [r.source for r in res.slices] == ["absent", "key", "absent"]


def test_resolve_tracker_names_objects_and_the_fallback(monkeypatch) -> None:
    assert resolve_tracker(None) == (None, None)
    wrapped, why = resolve_tracker(RegionTracker())
    assert isinstance(wrapped, VideoSliceTracker) and why is None
    assert wrapped.min_score == DEFAULT_PRESENCE == 0.5  # the video path's default
    with pytest.raises(ValueError, match="unknown tracker"):
        resolve_tracker("sam3")
    with pytest.raises(TypeError, match="SliceTracker"):
        resolve_tracker(object())
    import sys

    # transformers missing: per-slice grounding, and the result says why
    monkeypatch.setitem(sys.modules, "hybridgl.video.hf_trackers", None)
    vol, ball, _rod = phantom()
    res = segment_volume(
        CheapSegmenter(), vol, "the ball", keyslice=3, window=(100, 400),
        proposals=ball_only, tracker="sam2.1_hiera_tiny",
    )  # fmt: skip
    assert res.tracker is None and "per-slice grounding" in (res.tracker_fallback or "")
    assert res.to_dict()["tracker_fallback"] == res.tracker_fallback
    assert {r.source for r in res.slices if r.found} == {"key", "grounding"}
    np.testing.assert_array_equal(res.labels.astype(bool), ball)


# ---------------------------------------------------------------- the real video tracker


class Spy:
    """Delegates to a video tracker and records its calls (still a Tracker)."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.calls = inner, inner.name, []

    @property
    def memory_limit(self) -> int:
        return int(self.inner.memory_limit)

    def memory_frames(self) -> int:
        return int(self.inner.memory_frames())

    def reset(self, reverse: bool = False) -> None:
        self.calls.append(("reset", reverse))
        self.inner.reset(reverse=reverse)

    def step(self, image, seeds=None):
        self.calls.append(("step", bool(seeds)))
        return self.inner.step(image, seeds)

    def reseed(self, seeds):
        self.calls.append(("reseed", True))
        return self.inner.reseed(seeds)


def _own_propagation(model, processor, frames, mask, key: int, reverse: bool):
    """transformers' own propagation from ``key`` (one session per direction)."""
    h, w = frames[0].shape[:2]
    s = processor.init_video_session(video=frames, inference_device="cpu")
    processor.add_inputs_to_inference_session(s, frame_idx=key, obj_ids=1, input_masks=mask)
    model(inference_session=s, frame_idx=key)
    out = {}
    for o in model.propagate_in_video_iterator(s, start_frame_idx=key, reverse=reverse):
        full = processor.post_process_masks([o.pred_masks], original_sizes=[[h, w]], binarize=True)
        out[o.frame_idx] = full[0][0, 0].numpy()
    return out


@pytest.mark.slow
def test_slice_propagation_equals_the_models_own_propagation() -> None:
    pytest.importorskip("transformers")
    from hybridgl.video.hf_trackers import build_tracker

    # seed 7 of the tiny random SAM 2.1 video model keeps a non-empty object on every slice
    inner = build_tracker("sam2.1_hiera_tiny", random_mode="tiny", seed=7, device="cpu")
    spy = Spy(inner)
    vol, _ball, _rod = phantom()
    win = vol.resolve_window((100, 400))
    seen: dict[int, np.ndarray] = {}
    res = segment_volume(
        CheapSegmenter(), vol, "the ball", keyslice=3, window=win, proposals=ball_only,
        tracker=spy, tracker_min_score=0.0, on_slice=lambda r, _i, m: seen.__setitem__(r.index, m),
    )  # fmt: skip
    n = vol.num_slices(2)
    assert sorted(seen) == list(range(n)) and res.extent == (0, n - 1)
    assert spy.calls == [
        ("reset", False), ("step", True), *[("step", False)] * (n - 4),
        ("reset", True), ("step", True), *[("step", False)] * 3,
    ]  # fmt: skip
    frames = [vol.slice_rgb(k, 2, win) for k in range(n)]
    expected = {}
    for reverse in (False, True):
        own = _own_propagation(inner.model, inner.processor, frames, seen[3], 3, reverse)
        expected.update({k: m for k, m in own.items() if k != 3})
    assert sorted(expected) == [k for k in range(n) if k != 3]
    for k, m in expected.items():
        assert m.any(), k  # a real comparison, not two empty masks
        np.testing.assert_array_equal(seen[k], m, err_msg=f"slice {k}")


@pytest.mark.slow
def test_cli_segment_volume_with_a_tracker(tmp_path, monkeypatch, shared_tiny_segmenters) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("nibabel")
    import json

    from nibabel.testing import data_path

    from hybridgl.cli.main import main

    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path / "cache"))
    nii = f"{data_path}/anatomical.nii"
    out = tmp_path / "o"
    args = ["segment-volume", nii, "the bright part", "--out", str(out), "--keyslice", "1",
            "--window", "p1-99", "--no-overlays", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--tracker", "sam2.1_hiera_tiny", "--tracker-min-score", "0"]) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["tracker"] == "sam2.1_hiera_tiny" and doc["tracker_fallback"] is None
    assert doc["slices"] and {s["source"] for s in doc["slices"]} <= {"key", "tracker", "absent"}
    assert main([*args, "--tracker", "sam3"]) == 2


@pytest.mark.slow
def test_a_tracker_by_name_is_built_once_per_segmenter(monkeypatch) -> None:
    pytest.importorskip("transformers")
    import gc

    from hybridgl.medical import tracking

    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    seg = CheapSegmenter()
    a, _ = resolve_tracker("sam2.1_hiera_tiny", seg)
    b, _ = resolve_tracker("sam2.1_hiera_tiny", seg)
    assert a.tracker is b.tracker  # one model per (segmenter, name)
    other = CheapSegmenter()
    c, _ = resolve_tracker("sam2.1_hiera_tiny", other)
    assert c.tracker is not a.tracker
    del seg
    gc.collect()
    resolve_tracker("sam2.1_hiera_tiny", other)  # purges the gone segmenter's tracker
    kept = list(tracking._BUILT.values())
    assert all(model is not a.tracker for _, model in kept)
    assert any(ref() is other for ref, _ in kept)

"""segment_volume: key slice, per-slice grounding with absence, the tracker protocol,
flat memory; with the tiny random segmenter (its choices are arbitrary, so the tests
check invariants that hold whichever object it picks) and a synthetic CT."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from hybridgl.medical.propagate import SliceTracker, mask_iou, segment_volume
from hybridgl.medical.volume import Volume

SIZE, SLICES = 48, 8


@pytest.fixture(scope="module")
def small_segmenter():
    """Tiny random weights, no SAM (proposals are given), GEM at 112 px: fast per slice."""
    import os

    from hybridgl import Segmenter

    old = os.environ.get("HYBRIDGL_RANDOM_WEIGHTS")
    os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = "tiny"
    try:
        return Segmenter.from_pretrained(device="cpu", sam=None, gem_size=112)
    finally:
        if old is None:
            os.environ.pop("HYBRIDGL_RANDOM_WEIGHTS", None)
        else:
            os.environ["HYBRIDGL_RANDOM_WEIGHTS"] = old


def phantom(slices: int = SLICES) -> tuple[Volume, np.ndarray, np.ndarray]:
    """A CT-like volume (air -1000 HU, body 40 HU): a ball of 200 HU in slices 1..6 and a
    bright rod (700 HU) through every slice. Returns the volume and both objects' voxels."""
    i, j, k = np.meshgrid(np.arange(SIZE), np.arange(SIZE), np.arange(slices), indexing="ij")
    data = np.full((SIZE, SIZE, slices), -1000.0, dtype=np.float32)
    data[4:44, 4:44, :] = 40.0
    ball = (i - 16) ** 2 + (j - 24) ** 2 + ((k - 3.5) * 4) ** 2 <= 11**2
    rod = ((i - 34) ** 2 + (j - 24) ** 2 <= 4**2) & np.ones_like(ball)
    data[ball] = 200.0
    data[rod] = 700.0
    return Volume.from_array(data, spacing=(0.8, 0.8, 2.5), modality="CT"), ball, rod


def components(_index: int, image: np.ndarray) -> np.ndarray:
    """Proposals: the connected bright regions of the windowed slice (none: (0, H, W))."""
    count, lab = cv2.connectedComponents((image[:, :, 0] > 200).astype(np.uint8))
    masks = [lab == c for c in range(1, count)]
    return np.stack(masks) if masks else np.zeros((0, *image.shape[:2]), dtype=bool)


@pytest.mark.slow
def test_grounding_fallback_follows_the_key_object_and_finds_its_extent(small_segmenter) -> None:
    vol, ball, rod = phantom()
    seen: list[int] = []
    res = segment_volume(
        small_segmenter,
        vol,
        "the round lesion",
        window=(100, 400),
        proposals=components,
        sample_slices=3,
        on_slice=lambda rec, img, m: seen.append(rec.index),
    )
    assert res.key_slice is not None and res.key_scores
    assert res.key_slice in res.key_scores
    assert res.key_scores[res.key_slice] == max(res.key_scores.values())
    labels = res.labels.astype(bool)
    key_plane = labels[:, :, res.key_slice]
    chosen = ball if (key_plane & ball[:, :, res.key_slice]).any() else rod
    # whichever object the random model picked on the key slice, the propagation follows
    # that object only, through exactly the slices it occupies
    np.testing.assert_array_equal(labels, chosen)
    first, last = res.extent
    assert (first, last) == (
        int(np.where(chosen.any((0, 1)))[0].min()),
        int(np.where(chosen.any((0, 1)))[0].max()),
    )
    if chosen is ball:  # absence found on both sides
        assert [r.index for r in res.slices if not r.found] == [first - 1, last + 1]
    assert sorted(seen) == [r.index for r in res.slices]
    assert res.volume_ml == pytest.approx(chosen.sum() * 0.8 * 0.8 * 2.5 / 1000)
    assert res.window is not None and res.window.source == "explicit"


@pytest.mark.slow
def test_given_keyslice_on_a_slice_without_the_ball(small_segmenter) -> None:
    vol, ball, rod = phantom()
    res = segment_volume(
        small_segmenter, vol, "the rod", keyslice=0, window=(100, 400), proposals=components
    )
    # slice 0 holds only the rod: the key is the rod, followed through every slice
    assert res.key_slice == 0 and res.key_scores == {}
    np.testing.assert_array_equal(res.labels.astype(bool), rod)
    assert res.extent == (0, SLICES - 1)


def test_nothing_to_find(small_segmenter) -> None:
    vol = Volume.from_array(np.zeros((SIZE, SIZE, 4), np.float32))
    res = segment_volume(small_segmenter, vol, "the liver", window=(100, 400), proposals=components)
    assert not res.found and res.key_slice is None and res.extent is None and res.voxels == 0


class ThresholdTracker:
    """A real (if simple) tracker: the bright region overlapping the previous mask most."""

    def __init__(self) -> None:
        self.prev: np.ndarray | None = None
        self.starts = 0

    def start(self, image: np.ndarray, mask: np.ndarray, reverse: bool = False) -> None:
        self.prev, self.starts = mask.copy(), self.starts + 1

    def track(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        assert self.prev is not None
        regions = components(0, image)
        if not len(regions):
            return np.zeros(image.shape[:2], bool), 0.0
        ious = [mask_iou(r, self.prev) for r in regions]
        best = int(np.argmax(ious))
        self.prev = regions[best] if ious[best] > 0 else np.zeros(image.shape[:2], bool)
        return self.prev, float(ious[best])


@pytest.mark.slow
def test_tracker_protocol_with_regrounding(small_segmenter) -> None:
    vol, ball, rod = phantom()
    tracker = ThresholdTracker()
    assert isinstance(tracker, SliceTracker)
    res = segment_volume(
        small_segmenter,
        vol,
        "the ball",
        window=(100, 400),
        proposals=components,
        tracker=tracker,
        tracker_min_score=0.1,
        reground_every=2,
        sample_slices=3,
    )
    labels = res.labels.astype(bool)
    chosen = ball if (labels[:, :, res.key_slice] & ball[:, :, res.key_slice]).any() else rod
    np.testing.assert_array_equal(labels, chosen)
    sources = {r.source for r in res.slices}
    assert "tracker" in sources and "regrounded" in sources and res.tracker == "ThresholdTracker"
    assert tracker.starts > 2  # both directions plus re-anchoring
    with pytest.raises(TypeError, match="SliceTracker"):
        segment_volume(small_segmenter, vol, "x", tracker=object())  # type: ignore[arg-type]


class _State:
    def __init__(self, masks: np.ndarray) -> None:
        self.masks = masks

    def input_mask(self, i: int) -> np.ndarray:
        return self.masks[i].copy()


class CheapSegmenter:
    """The three stages segment_volume uses, without models: for measuring its own memory."""

    def parse(self, expression: str) -> str:
        return expression

    def encode_image(self, image, proposals, max_pixels=None):
        return _State(np.asarray(proposals, dtype=bool))

    def score(self, state, parse, top_k=1):
        from hybridgl.types import Candidate, Parse, Prediction

        found = len(state.masks) > 0
        cands = [Candidate(i, 1.0, 1.0 / len(state.masks)) for i in range(len(state.masks))]
        mask = state.masks[0] if found else np.zeros((SIZE, SIZE), bool)
        return Prediction(
            mask, (0, 0, 0, 0), 1.0, found, cands[:top_k], 0, 0, Parse(parse, parse, parse)
        )


def _peak_beyond_output(slices: int) -> int:
    vol, _, _ = phantom(slices)
    tracemalloc.start()
    segment_volume(
        CheapSegmenter(), vol, "the rod", keyslice=0, window=(100, 400), proposals=components
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - SIZE * SIZE * slices  # minus the uint8 label volume


def test_memory_flat_in_the_number_of_slices() -> None:
    small, large = _peak_beyond_output(10), _peak_beyond_output(80)
    assert small > 0
    # 8x the slices: the working memory beyond the output stays about the same
    assert large < small * 1.5 + 64_000, (small, large)


def ball_only(_index: int, image: np.ndarray) -> np.ndarray:
    """Proposals: the mid-gray regions (the 200 HU ball under the window 100/400)."""
    gray = image[:, :, 0]
    count, lab = cv2.connectedComponents(((gray > 150) & (gray < 250)).astype(np.uint8))
    masks = [lab == c for c in range(1, count)]
    return np.stack(masks) if masks else np.zeros((0, *image.shape[:2]), dtype=bool)


@pytest.mark.slow
def test_extent_ends_where_the_object_is_absent(small_segmenter) -> None:
    vol, ball, _rod = phantom()
    res = segment_volume(
        small_segmenter, vol, "the ball", keyslice=3, window=(100, 400), proposals=ball_only
    )
    np.testing.assert_array_equal(res.labels.astype(bool), ball)
    assert res.extent == (1, 6)
    assert [(r.index, r.found, r.source) for r in res.slices] == [
        (0, False, "absent"),
        *[(k, True, "key" if k == 3 else "grounding") for k in range(1, 7)],
        (7, False, "absent"),
    ]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_and_masks_share_one_layout_on_every_axis(axis: int) -> None:
    from hybridgl.medical.propagate import _put

    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    vol = Volume.from_array(data)
    labels = np.zeros(vol.shape, np.uint8)
    rng = np.random.default_rng(axis)
    for index in range(vol.num_slices(axis)):
        image = vol.slice_values(index, axis)
        # rows are the higher remaining axis, columns the lower
        np.testing.assert_array_equal(image, np.take(data, index, axis=axis).T)
        mask = rng.random(image.shape) > 0.5
        _put(labels, axis, index, vol.mask_to_plane(mask))
        # the mask written back reads as the same image-shaped mask
        back = Volume.from_array(labels.astype(np.float32)).slice_values(index, axis)
        np.testing.assert_array_equal(back.astype(bool), mask)
    rgb = vol.slice_rgb(2, axis, vol.resolve_window("0,100"))
    assert rgb.shape == (*vol.slice_values(2, axis).shape, 3) and rgb.dtype == np.uint8

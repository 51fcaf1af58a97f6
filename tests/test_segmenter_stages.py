"""The public stages of the segmenter, explicit image states, API misuse, the working
resolution and threads (tiny random weights: the choices mean nothing, the contracts are
real)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hybridgl.errors import ExpressionError
from hybridgl.masks import mask_to_box, masks_to_boxes_xywh
from hybridgl.protocols import SegmenterLike
from hybridgl.state import ImageState, working_size


def _stripes(h: int, w: int, n: int, offset: int = 0) -> np.ndarray:
    """``n`` horizontal stripe proposals of an ``h`` x ``w`` image, shifted by ``offset`` rows."""
    props = np.zeros((n, h, w), bool)
    step = h // (n + 1)
    for i in range(n):
        props[i, offset + i * step : offset + (i + 1) * step, :] = True
    return props


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _same(a, b) -> None:
    assert a.index == b.index and a.pure_index == b.pure_index and a.score == b.score
    assert a.box == b.box and a.candidates == b.candidates and a.found == b.found
    np.testing.assert_array_equal(a.mask, b.mask)


def test_segmenter_satisfies_the_protocol(tiny_segmenter):
    assert isinstance(tiny_segmenter, SegmenterLike)


@pytest.mark.slow
def test_stages_compose_to_predict(tiny_segmenter, coco_sample):
    seg = tiny_segmenter
    path, masks = coco_sample
    current = seg.set_image(_image(0, 30, 40), proposals=_stripes(30, 40, 3))
    state = seg.encode_image(path, proposals=masks)
    assert seg.image_state is current  # encode_image leaves the current image alone
    assert set(state.timings) == {"proposals", "features", "gem"}
    expr = "the man on the left in a red shirt"
    via_state = seg.predict(expr, state=state)
    via_score = seg.score(state, seg.parse(expr))
    [via_many] = seg.predict_many([expr], state=state)
    assert seg.image_state is current
    seg.set_image(path, proposals=masks)
    via_current = seg.predict(expr)
    for p in (via_score, via_many, via_current):
        _same(p, via_state)
    pure = seg.score(state, seg.parse(expr), top_k=5, guidance=False)
    assert pure.index == via_state.pure_index and len(pure.candidates) == 5


def test_api_misuse(tiny_segmenter):
    seg = tiny_segmenter
    state = seg.set_image(_image(1, 20, 30), proposals=_stripes(20, 30, 3))
    with pytest.raises(TypeError, match="list of expressions"):
        seg.predict_many("dog")
    for bad_k in (0, -1):
        with pytest.raises(ValueError, match="top_k"):
            seg.predict("a dog", top_k=bad_k)
        with pytest.raises(ValueError, match="top_k"):
            seg.predict_many(["a dog"], top_k=bad_k)
        with pytest.raises(ValueError, match="top_k"):
            seg.score(state, seg.parse("a dog"), top_k=bad_k)
    with pytest.raises(TypeError, match="top_k"):
        seg.predict("a dog", top_k=2.5)
    for bad in (123, None, b"dog", ["dog"]):
        with pytest.raises(ExpressionError, match="string"):
            seg.predict(bad)
    with pytest.raises(ExpressionError, match="empty"):
        seg.predict("  ")
    with pytest.raises(TypeError, match="ImageState"):
        seg.predict("a dog", state="not a state")
    assert seg.predict("a dog", top_k=1).found


def test_predict_without_any_image_says_how(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    seg = Segmenter.from_pretrained(sam=None, device="cpu")
    with pytest.raises(RuntimeError, match="set_image"):
        seg.predict("a dog")
    with pytest.raises(RuntimeError, match="set_image"):
        seg.predict_many(["a dog"])


@pytest.mark.slow
def test_proposals_are_binarised_once(tiny_segmenter):
    seg = tiny_segmenter
    img = _image(2, 20, 30)
    soft = _stripes(20, 30, 3).astype(np.float32) * 0.7
    soft[0, 15:, :] = 0.3  # below the threshold: not part of any mask
    state = seg.encode_image(img, proposals=soft)
    np.testing.assert_array_equal(state.masks, soft > 0.5)
    assert state.masks.dtype == bool
    # all-empty proposals (a 0.3 soft mask is empty) give an explicit "no mask"
    for empty in (np.full((2, 20, 30), 0.3), np.zeros((3, 20, 30), bool)):
        pred = seg.predict("a dog", state=seg.encode_image(img, proposals=empty))
        assert not pred.found and not pred.mask.any() and pred.mask.shape == (20, 30)
        assert pred.index is None and pred.num_proposals == len(empty)
    for bad, what in [
        (np.full((1, 20, 30), np.nan), "NaN"),
        (np.full((1, 20, 30), "1"), "dtype"),
        (np.ones((1, 20, 30), dtype=object), "dtype"),
        (np.ones((2, 20, 31)), r"\(N, 20, 30\)"),
    ]:
        with pytest.raises(ValueError, match=what):
            seg.encode_image(img, proposals=bad)


@pytest.mark.slow
def test_working_resolution_shrinks_the_work_not_the_answer(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    seg = Segmenter.from_pretrained(sam=None, device="cpu", max_side=40)
    img = _image(3, 60, 80)
    props = np.zeros((3, 60, 80), bool)  # blocks on even coordinates survive 2x down/up
    props[0, 10:30, 10:40] = props[1, 30:60, :] = props[2, :, 60:] = True
    state = seg.encode_image(img, proposals=props)
    assert working_size(60, 80, 40) == (30, 40) == state.work_size
    assert state.image.shape == (60, 80, 3) and state.masks.shape == (3, 30, 40)
    np.testing.assert_array_equal(state.input_masks(), props)
    np.testing.assert_array_equal(state.boxes, masks_to_boxes_xywh(props))  # input resolution
    for expr in ("the box on the left", "the thing at the bottom", "right"):
        pred = seg.predict(expr, state=state)
        assert pred.mask.shape == (60, 80)
        np.testing.assert_array_equal(pred.mask, props[pred.index])
        assert pred.box == mask_to_box(props[pred.index])
    assert working_size(640, 480, 1024) == (640, 480) and working_size(50, 60, None) == (50, 60)
    assert working_size(3000, 4000, 1024) == (768, 1024)


@pytest.mark.slow
def test_working_resolution_default_keeps_coco_predictions(monkeypatch, coco_sample):
    """coco-mini images are <= 640 px: the default cap (1024) changes no prediction."""
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    path, masks = coco_sample
    capped = Segmenter.from_pretrained(sam=None, device="cpu")
    uncapped = Segmenter.from_pretrained(sam=None, device="cpu", max_side=None)
    assert capped.config.max_side == 1024
    a, b = capped.encode_image(path, proposals=masks), uncapped.encode_image(path, masks)
    assert a.features.equal(b.features) and a.gem_tokens.equal(b.gem_tokens)
    for expr in ("the man on the left", "bigger dog", "cup in the middle"):
        _same(capped.predict(expr, state=a), uncapped.predict(expr, state=b))


@pytest.mark.slow
def test_threads_each_get_their_own_image(tiny_segmenter):
    """Threads that pass their own state, and threads that hold the lock around
    set_image + predict, only ever get masks of their own image."""
    seg = tiny_segmenter
    seg.set_image(_image(9, 24, 24), proposals=_stripes(24, 24, 2))
    sentinel = seg.image_state
    exprs = ["the left one", "a dog on the right", "the top thing", "the small cup"]
    errors: list[str] = []
    start = threading.Barrier(6)

    def job(k: int, locked: bool) -> None:
        h, w = 30 + 2 * k, 40 + k  # distinct sizes and stripes: the mask names the image
        img, props = _image(10 + k, h, w), _stripes(h, w, 4, offset=k % 3)
        try:
            start.wait()
            own = seg.encode_image(img, proposals=props) if not locked else None
            for i in range(8):
                if locked:
                    with seg.lock:
                        seg.set_image(img, proposals=props)
                        preds = [seg.predict(exprs[i % 4])]
                else:
                    preds = seg.predict_many(exprs[i % 4 : i % 4 + 2], state=own)
                for p in preds:
                    if p.mask.shape != (h, w) or not np.array_equal(p.mask, props[p.index]):
                        errors.append(f"thread {k} got a mask of another image")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {k}: {e!r}")

    threads = [threading.Thread(target=job, args=(k, k % 3 == 2)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert isinstance(seg.image_state, ImageState)
    if seg.image_state is not sentinel:  # only the locked threads may have changed it
        assert seg.image_state.height in (34, 40)


@pytest.mark.slow
def test_encode_image_and_set_image_check_the_callers_pixel_limit(tiny_segmenter):
    """``max_pixels`` reaches the segmenter's own loader: a caller that decoded an image
    under a raised limit (server, CLI ``--max-pixels``) is not refused again by the
    default one, and a lowered limit refuses the image with the size and that limit."""
    from hybridgl.errors import ImageTooLargeError

    seg = tiny_segmenter
    img, masks = _image(3, 20, 30), _stripes(20, 30, 2)
    for stage in (seg.encode_image, seg.set_image):
        with pytest.raises(ImageTooLargeError) as refused:
            stage(img, masks, max_pixels=599)
        assert refused.value.limit == 599
        assert (refused.value.height, refused.value.width) == (20, 30)
        assert "599" in str(refused.value)
        assert stage(img, masks, max_pixels=600).num_proposals == 2
        assert stage(img, masks, max_pixels=None).num_proposals == 2

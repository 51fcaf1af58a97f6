"""End to end with tiny random weights on real COCO images (a test device: the choices
mean nothing, the plumbing and the contracts are real)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hybridgl.errors import ExpressionError, ImageError, WeightsError
from hybridgl.masks import masks_to_boxes_xywh


def test_predict_before_set_image_raises():
    from hybridgl.segmenter import Segmenter

    seg = Segmenter.__new__(Segmenter)
    seg._state = None
    with pytest.raises(RuntimeError, match="set_image"):
        seg.predict("a dog")


@pytest.mark.slow
def test_ground_truth_proposals_end_to_end(tiny_segmenter, coco_sample):
    seg = tiny_segmenter
    path, masks = coco_sample
    state = seg.set_image(path, proposals=masks)
    h, w = state.height, state.width
    assert state.masks.shape == masks.shape and state.features.shape[0] == len(masks)
    np.testing.assert_array_equal(state.boxes, masks_to_boxes_xywh(masks))
    before = dict(seg.stats)
    exprs = ["the man on the left in a red shirt", "a dog", "cup above the table near the bowl"]
    preds = seg.predict_many(exprs)
    # image work is reused: no SAM, no feature pass, no GEM pass for further expressions
    for key in ("sam_runs", "feature_passes", "gem_passes"):
        assert seg.stats[key] == before.get(key, 0)
    for expr, pred in zip(exprs, preds, strict=True):
        assert pred.found and pred.mask.shape == (h, w) and pred.mask.dtype == bool
        assert 0 <= pred.index < len(masks) and 0 <= pred.pure_index < len(masks)
        np.testing.assert_array_equal(pred.mask, masks[pred.index])
        assert pred.box == tuple(masks_to_boxes_xywh(masks[pred.index][None])[0])
        assert pred.parse.expression == expr
        # only the top-k1 CLIP candidates can win; the answer is the first candidate
        assert pred.candidates[0].index == pred.index
        assert pred.candidates[0].final_score == pytest.approx(pred.score)
        top3 = sorted(range(len(masks)), key=lambda i: -_clip_score(seg, state, expr)[i])[:3]
        assert pred.index in top3 and pred.pure_index == top3[0]
        json.dumps(pred.to_dict())  # JSON-ready


def _clip_score(seg, state, expr):
    """c_i recomputed directly from open_clip calls (METHOD.md section 4)."""
    parse = seg.parser.parse(expr)
    tok = seg.tokenizer([parse.sentence, parse.noun_phrase])
    with torch.no_grad():
        e = seg.clip.encode_text(tok)
    f = 0.5 * e[0] + 0.5 * e[1]
    v = state.features / state.features.norm(dim=-1, keepdim=True)
    return (seg.logit_scale * v @ (f / f.norm())).tolist()


@pytest.mark.slow
def test_sam_proposals_end_to_end(tiny_segmenter, coco_sample):
    seg = tiny_segmenter
    path, _ = coco_sample
    runs = seg.stats["sam_runs"]
    state = seg.set_image(path)
    assert seg.stats["sam_runs"] == runs + 1
    h, w = state.height, state.width
    pred = seg.predict("the bird on the right")
    assert pred.mask.shape == (h, w)
    if state.num_proposals == 0:
        assert not pred.found and not pred.mask.any() and pred.index is None
    else:
        assert pred.found
        assert any(np.array_equal(pred.mask, m) for m in state.masks)
    # the proposal stage is SAM's generator as is, with the paper's settings
    from segment_anything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(
        seg.sam,
        points_per_side=8,
        pred_iou_thresh=0.7,
        stability_score_thresh=0.7,
        crop_n_layers=0,
        crop_n_points_downscale_factor=1,
        min_mask_region_area=800,
    )
    ref = gen.generate(state.image)
    assert len(ref) == state.num_proposals
    for r, m, b in zip(ref, state.masks, state.boxes, strict=True):
        np.testing.assert_array_equal(r["segmentation"], m)
        assert list(b) == list(r["bbox"])


@pytest.mark.slow
def test_degenerate_proposals(tiny_segmenter):
    seg = tiny_segmenter
    img = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    whole = np.ones((1, 60, 80), bool)
    empty = np.zeros((1, 60, 80), bool)
    pixel = np.zeros((1, 60, 80), bool)
    pixel[0, 10, 10] = True
    seg.set_image(img, proposals=np.concatenate([whole, empty, pixel]))
    pred = seg.predict("the thing")
    assert pred.found and pred.index in (0, 1, 2)
    for c in pred.candidates:
        assert np.isfinite(c.final_score) and np.isfinite(c.coherence_score)
    # a single proposal (fewer than k1 and k2): it is the answer
    seg.set_image(img, proposals=whole)
    pred = seg.predict("the cat to the left of the dog")
    assert pred.index == 0 and pred.mask.all()
    # no proposal at all: an explicit "no mask"
    seg.set_image(img, proposals=np.zeros((0, 60, 80), bool))
    pred = seg.predict("a dog")
    assert not pred.found and pred.mask.shape == (60, 80) and not pred.mask.any()
    assert pred.box == (0.0, 0.0, 0.0, 0.0) and pred.candidates == []


def test_expressions_edge_cases(tiny_segmenter):
    seg = tiny_segmenter
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    props = np.zeros((4, 40, 50), bool)
    for i in range(4):
        props[i, i * 10 : (i + 1) * 10, :] = True
    seg.set_image(img, proposals=props)
    long = "the " + " ".join(["very big red"] * 60) + " car on the left"
    assert seg.predict(long).found  # > 77 CLIP tokens: truncated, not an error
    assert seg.predict("on the left").found  # no noun
    for bad in ["", "   \n"]:
        with pytest.raises(ExpressionError):
            seg.predict(bad)
    with pytest.raises(ValueError):
        seg.predict("")
    pure = seg.predict("the dog", guidance=False)
    assert pure.index == pure.pure_index and pure.candidates[0].final_score is None


def test_bad_inputs(tiny_segmenter, tmp_path):
    seg = tiny_segmenter
    with pytest.raises(ImageError):
        seg.set_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError):
        seg.set_image(bad)
    img = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="proposals"):
        seg.set_image(img, proposals=np.zeros((2, 10, 11), bool))


def test_image_inputs_are_equivalent(tmp_path):
    from hybridgl.images import load_image

    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    np.testing.assert_array_equal(load_image(p), arr)
    np.testing.assert_array_equal(load_image(str(p)), arr)
    np.testing.assert_array_equal(load_image(Image.fromarray(arr)), arr)
    np.testing.assert_array_equal(load_image(p.read_bytes()), arr)
    gray = load_image(Image.fromarray(arr[:, :, 0]))
    assert gray.shape == (20, 30, 3) and (gray[:, :, 0] == arr[:, :, 0]).all()
    rgba = load_image(Image.fromarray(np.dstack([arr, np.full((20, 30), 255, np.uint8)])))
    np.testing.assert_array_equal(rgba, arr)
    pal = Image.fromarray(arr).convert("P")
    assert load_image(pal).shape == (20, 30, 3)
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): 20x30 stored -> 30x20
    exif = Image.Exif()
    exif[0x0112] = 6
    q = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(q, exif=exif)
    assert load_image(q).shape == (30, 20, 3)


def test_fixed_preset_and_fusion_override(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    seg = Segmenter.from_pretrained(sam=None, preset="fixed", fusion="L2G")
    assert seg.config.fix_right_relation and seg.config.vertical_priors
    assert seg.config.keep_aspect and seg.config.clip_norm_both_views
    assert seg.config.fusion == "L2G" and seg.model_info["random_weights"] == "tiny"
    img = np.random.default_rng(3).integers(0, 256, (30, 60, 3), dtype=np.uint8)
    props = np.zeros((3, 30, 60), bool)
    props[0, :, :20] = props[1, :, 20:40] = props[2, :, 40:] = True
    seg.set_image(img, proposals=props)
    pred = seg.predict("the box on the right")
    assert pred.parse.relation == "right" and pred.found
    with pytest.raises(RuntimeError, match="no SAM"):
        seg.set_image(img)


def test_missing_weights_offline_error(monkeypatch, tmp_path):
    monkeypatch.delenv("HYBRIDGL_RANDOM_WEIGHTS", raising=False)
    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HYBRIDGL_WEIGHTS_DIR", str(tmp_path / "weights"))
    from hybridgl import Segmenter

    with pytest.raises(WeightsError) as e:
        Segmenter.from_pretrained(sam="vit_b")
    msg = str(e.value)
    assert "ViT-B-16.pt" in msg and "openaipublic" in msg and str(tmp_path / "weights") in msg
    # every missing file is named in the one error, not only the first
    assert "sam_vit_b_01ec64.pth" in msg and "dl.fbaipublicfiles.com" in msg


@pytest.mark.slow
def test_bf16_autocast_runs(monkeypatch, coco_sample):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    path, masks = coco_sample
    seg = Segmenter.from_pretrained(sam=None, dtype="bf16", device="cpu")
    seg.set_image(path, proposals=masks)
    pred = seg.predict("a person")
    assert pred.found and pred.mask.shape == masks.shape[1:]


@pytest.mark.parametrize("size", ["tiny", pytest.param("full", marks=pytest.mark.slow)])
def test_trimmed_text_encoder_equals_encode_text(size):
    """The causal text transformer run only up to the last end token gives CLIP's output."""
    from hybridgl.models.clip import build_clip, encode_text_trimmed, get_tokenizer, randomize_clip

    model = randomize_clip(build_clip("ViT-B-16", size), seed=4).eval()
    texts = ["a dog", "the man on the left in a red shirt", "x " * 120, "a photo of a cat."]
    tokens = get_tokenizer()(texts)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_text_trimmed(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5
        )
        short = tokens[:1]  # one short text alone: about 4 positions instead of 77
        torch.testing.assert_close(
            encode_text_trimmed(model, short), model.encode_text(short), atol=1e-5, rtol=1e-5
        )


def test_text_embeddings_do_not_depend_on_the_cache(tiny_segmenter):
    seg = tiny_segmenter
    seg._text_cache.clear()
    alone = seg.encode_texts(["the dog"])[0].clone()
    seg._text_cache.clear()
    mixed = seg.encode_texts(["a much longer phrase about a red car on the left", "the dog"])
    assert torch.equal(mixed[1], alone)  # bitwise: no dependence on batch or cache history
    before = seg.stats["text_encodes"]
    again = seg.encode_texts(["the dog", "the dog"])
    assert seg.stats["text_encodes"] == before and torch.equal(again[0], alone)

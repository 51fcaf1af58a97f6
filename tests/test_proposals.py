"""Proposal backends: SAM v1 unchanged behind the interface, the transformers backends
equal to transformers' own mask-generation pipeline plus SAM's minimum-area step, each
backend end to end on a coco-mini image with tiny random weights, and the registry."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from hybridgl.config import SamConfig
from hybridgl.errors import WeightsError
from hybridgl.models import backends as B
from hybridgl.models import hf_proposals as H
from hybridgl.models import proposal_base as PB
from hybridgl.models import proposals as P

# one backend per transformers model class (the sizes share their class and code path)
HF_FAMILIES = ["sam2.1_hiera_tiny", "slimsam_50", "sam_hq_vit_b"]
FAST = SamConfig(points_per_side=2)  # the paper's thresholds and minimum area, 4 points


def _small(path, side: int = 160) -> np.ndarray:
    from PIL import Image

    from hybridgl.images import load_image

    img = Image.fromarray(load_image(path))
    img.thumbnail((side, side))
    return np.array(img)


@pytest.fixture(scope="module")
def image(coco_sample) -> np.ndarray:
    return _small(coco_sample[0])


def test_registry_names_and_unknown_backend():
    assert B.DEFAULT_BACKEND == "vit_h" and list(B.BACKENDS)[:3] == ["vit_h", "vit_l", "vit_b"]
    for name in (
        "sam2.1_hiera_tiny",
        "sam2.1_hiera_small",
        "sam2.1_hiera_base_plus",
        "sam2.1_hiera_large",
        "slimsam_50",
        "slimsam_77",
        "sam_hq_vit_b",
        "sam_hq_vit_l",
        "sam_hq_vit_h",
    ):
        assert B.get_backend_spec(name).needs_transformers
    with pytest.raises(ValueError, match="sam2.1_hiera_tiny"):
        B.get_backend_spec("vit_x")


def test_sam_v1_backend_is_the_generator_unchanged(image):
    """masks, boxes and scores are SAM's own generator's records, in its order."""
    from segment_anything import SamAutomaticMaskGenerator

    from hybridgl.models.sam import random_sam

    cfg = SamConfig(points_per_side=4)
    backend = P.build_backend("vit_b", cfg, random_mode="tiny", seed=1)
    got = backend.generate(image)
    ref = SamAutomaticMaskGenerator(
        random_sam("tiny", 1), output_mode="binary_mask", **cfg.generator_kwargs()
    ).generate(image)
    assert len(got) == len(ref) >= 1
    for r, m, b, s in zip(ref, got.masks, got.boxes, got.scores, strict=True):
        np.testing.assert_array_equal(r["segmentation"], m)
        assert list(b) == list(r["bbox"]) and s == np.float32(r["predicted_iou"])
    assert got.masks.dtype == bool and got.boxes.dtype == np.float64
    assert set(backend.last_timings) == {"image_encoder", "mask_generation", "total"}
    assert backend.last_timings["image_encoder"] > 0
    # the (masks, boxes) call shape
    masks, boxes = backend(image)
    np.testing.assert_array_equal(masks, got.masks)


def test_min_area_equals_sam_postprocessing():
    """remove_small_regions is SamAutomaticMaskGenerator.postprocess_small_regions."""
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.amg import MaskData, batched_mask_to_box, mask_to_rle_pytorch

    rng = np.random.default_rng(0)
    masks = np.zeros((5, 60, 80), bool)
    masks[0, 5:40, 5:50] = True
    masks[0, 50:52, 70:72] = True  # an island
    masks[1, 10:50, 10:70] = True
    masks[1, 20:22, 20:22] = False  # a hole
    masks[2] = rng.random((60, 80)) > 0.6
    masks[3, 5:40, 6:50] = True  # duplicate of 0 after cleaning
    masks[4, 0:3, 0:3] = True  # small everywhere: its largest region is kept
    scores = np.linspace(0.9, 0.8, 5).astype(np.float32)
    got_m, got_b, got_s = PB.remove_small_regions(masks, scores, 20, 0.7)

    t = torch.as_tensor(masks)
    data = MaskData(
        rles=mask_to_rle_pytorch(t), boxes=batched_mask_to_box(t), iou_preds=torch.as_tensor(scores)
    )
    from segment_anything.utils.amg import rle_to_mask

    ref = SamAutomaticMaskGenerator.postprocess_small_regions(data, 20, 0.7)
    ref_m = np.stack([rle_to_mask(r) for r in ref["rles"]])
    np.testing.assert_array_equal(got_m, ref_m)
    xywh = ref["boxes"].numpy().astype(np.float64)
    xywh[:, 2:] -= xywh[:, :2]
    np.testing.assert_array_equal(got_b, xywh)
    np.testing.assert_array_equal(got_s, ref["iou_preds"].numpy())
    assert len(got_m) < len(masks)  # the duplicate went


@pytest.mark.slow
@pytest.mark.parametrize("name", HF_FAMILIES)
def test_hf_backend_equals_transformers_pipeline(name, image):
    """The backend's masks are transformers' mask-generation pipeline's on the same random
    weights and settings, then SAM's minimum-area step."""
    from PIL import Image
    from transformers import pipeline

    backend = P.build_backend(name, FAST, random_mode="tiny", seed=3)
    seen = []
    hook = backend.model.vision_encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(tuple((args or (kwargs["pixel_values"],))[0].shape)),
        with_kwargs=True,
    )
    try:
        got = backend.generate(image)
    finally:
        hook.remove()
    assert seen == [(1, 3, 256, 256)]  # the tiny test model runs at 256 px (real ones: 1024)
    assert got.masks.shape[1:] == image.shape[:2] and got.masks.dtype == bool
    assert len(got.boxes) == len(got.scores) == len(got)

    gen = pipeline("mask-generation", model=backend.model, image_processor=backend.image_processor)
    out = gen(
        Image.fromarray(image),
        points_per_crop=2,
        pred_iou_thresh=0.7,
        stability_score_thresh=0.7,
        crops_nms_thresh=0.7,
        points_per_batch=16,
    )
    ref_masks = np.stack([np.asarray(m, dtype=bool) for m in out["masks"]])
    ref_scores = torch.as_tensor(out["scores"]).float().numpy()
    raw_masks, raw_scores = backend.run_pipeline(image)
    np.testing.assert_array_equal(raw_masks, ref_masks)
    np.testing.assert_array_equal(raw_scores, ref_scores)
    m, b, s = PB.remove_small_regions(ref_masks, ref_scores, 800, 0.7)
    np.testing.assert_array_equal(got.masks, m)
    np.testing.assert_array_equal(got.boxes, b)
    np.testing.assert_array_equal(got.scores, s)


@pytest.mark.slow
@pytest.mark.parametrize("name", HF_FAMILIES)
def test_hf_backend_end_to_end(name, monkeypatch, coco_sample):
    """Segmenter.from_pretrained(sam=name) with tiny random weights on a coco-mini image."""
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    seg = Segmenter.from_pretrained(sam=name, device="cpu", config=None)
    assert isinstance(seg.proposer, H.HFMaskGenerationBackend) and seg.proposer.name == name
    assert seg.proposer.config == seg.config.sam
    img = _small(coco_sample[0])
    state = seg.set_image(img)
    assert state.source == "sam" and state.masks.shape[1:] == img.shape[:2]
    assert state.num_proposals >= 1  # random weights: usually one mask survives
    pred = seg.predict("the person on the left")
    assert pred.found and any(np.array_equal(pred.mask, m) for m in state.masks)
    assert seg.model_info["sam"] == name


def test_hf_backend_autocast_runs_encoder_only_in_bf16(image):
    backend = P.build_backend("slimsam_50", FAST, random_mode="tiny", seed=3)
    seen = []
    enc = backend.model.vision_encoder
    handle = enc.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = backend.generate(image)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]
    assert got.scores.dtype == np.float32 and len(got) >= 1


@pytest.mark.slow
def test_full_size_configs_are_the_published_architectures():
    """Parameter counts of the configurations written in code (no download)."""
    transformers = pytest.importorskip("transformers")

    def count(name: str) -> float:
        spec = B.get_backend_spec(name)
        with torch.device("meta"):
            model = {
                "hf_sam2": transformers.Sam2Model,
                "hf_sam": transformers.SamModel,
                "hf_sam_hq": transformers.SamHQModel,
            }[spec.family](H.hf_config(spec))
        return sum(p.numel() for p in model.parameters()) / 1e6

    # published totals: SAM 2.1 Hiera-T/S/B+/L 38.9/46/80.8/224.4M including about 7.5M of
    # video memory modules that the image-only Sam2Model does not hold; SAM-HQ = SAM
    # (ViT-B 93.7M, ViT-H 641M) + about 1.1M; SlimSAM-50 ships 112 MB of float32 (28M)
    for name, published in (
        ("sam2.1_hiera_tiny", 38.9 - 7.5),
        ("sam2.1_hiera_small", 46.0 - 7.5),
        ("sam2.1_hiera_base_plus", 80.8 - 7.5),
        ("sam2.1_hiera_large", 224.4 - 7.5),
        ("sam_hq_vit_b", 93.7 + 1.1),
        ("sam_hq_vit_h", 641.1 + 1.1),
        ("slimsam_50", 112 / 4),
    ):
        assert abs(count(name) - published) < 0.01 * published, name
        spec = B.get_backend_spec(name)  # the published input side and preprocessing
        config, proc = H.hf_config(spec), H.hf_image_processor(spec)
        if spec.family == "hf_sam2":
            assert config.vision_config.backbone_config.image_size == [1024, 1024]
            assert config.vision_config.backbone_feature_sizes == [[256, 256], [128, 128], [64, 64]]
            assert (proc.size.height, proc.size.width) == (1024, 1024)
        else:
            assert config.vision_config.image_size == 1024
            assert proc.size.longest_edge == 1024 and proc.pad_size.height == 1024
        assert config.prompt_encoder_config.image_size == 1024
    assert count("slimsam_77") < count("slimsam_50")


def test_missing_transformers_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    with pytest.raises(ImportError) as e:
        Segmenter.from_pretrained(sam="sam2.1_hiera_tiny", device="cpu")
    assert 'pip install "hybridgl[transformers]"' in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", [n for n in B.BACKENDS if B.BACKENDS[n].needs_transformers])
def test_hub_entries_resolve_offline_from_a_weights_dir(name, monkeypatch, tmp_path):
    from hybridgl import weights

    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path / "cache"))
    ck = weights.get_checkpoint(B.get_backend_spec(name).checkpoint)
    assert ck.is_hub and ck.hub_repo and ck.revision and ck.kind == "sam"
    assert weights.sam_checkpoint_name(name) == ck.name
    wdir = tmp_path / "w"
    with pytest.raises(WeightsError) as e:
        weights.resolve(ck.name, weights_dir=wdir)
    assert ck.hub_repo in str(e.value) and "HYBRIDGL_OFFLINE" in str(e.value)
    folder = wdir / ck.filename
    folder.mkdir(parents=True)
    for f in ck.hub_files[:-1]:
        (folder / f).write_text("{}")
    with pytest.raises(WeightsError):  # incomplete copy: not accepted
        weights.resolve(ck.name, weights_dir=wdir)
    (folder / ck.hub_files[-1]).write_text("{}")
    assert weights.resolve(ck.name, weights_dir=wdir) == folder
    monkeypatch.setenv("HYBRIDGL_WEIGHTS_DIR", str(wdir))
    assert weights.resolve(ck.name) == folder
    assert weights.resolve(ck.name, path=folder) == folder
    assert weights.verify_file(ck, folder)


def test_cli_missing_extra_is_a_one_line_usage_error(monkeypatch, coco_sample, capsys):
    from hybridgl.cli.main import main

    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    threads = torch.get_num_threads()
    rc = main(["segment", str(coco_sample[0]), "a cat", "--sam", "slimsam_50", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and 'pip install "hybridgl[transformers]"' in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    torch.set_num_threads(threads)


def test_cli_model_options_reach_the_backend(monkeypatch):
    """--sam, --dtype, --points-per-side and --threads of the model options."""
    import argparse

    from hybridgl.cli.options import add_model_args, build_segmenter

    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    p = argparse.ArgumentParser()
    add_model_args(p)
    threads = torch.get_num_threads()
    try:
        args = p.parse_args(
            ["--sam", "vit_b", "--dtype", "bf16", "--points-per-side", "4", "--threads", "1",
             "--device", "cpu"]
        )  # fmt: skip
        seg = build_segmenter(args)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert seg.proposer.config.points_per_side == 4 == seg.config.sam.points_per_side
    assert seg.dtype == torch.bfloat16 and seg.model_info["sam"] == "vit_b"
    assert seg.config.sam.min_mask_region_area == 800  # the rest stays the paper's
    with pytest.raises(SystemExit):
        p.parse_args(["--points-per-side", "0"])

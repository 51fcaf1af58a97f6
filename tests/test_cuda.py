"""The CUDA path: autocast in fp16 and bf16, device placement, and no host round-trips in
the per-proposal loop. Skipped without a CUDA device; scripts/device_check.sh runs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def tiny_env(monkeypatch):
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")


def _image(coco_sample) -> np.ndarray:
    from PIL import Image

    from hybridgl.images import load_image

    img = Image.fromarray(load_image(coco_sample[0]))
    img.thumbnail((320, 320))
    return np.array(img)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("sam", ["vit_b", "slimsam_50"])
def test_autocast_and_placement(tiny_env, coco_sample, sam, dtype):
    from hybridgl import Segmenter

    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    seg = Segmenter.from_pretrained(sam=sam, device="cuda", dtype=dtype)
    assert seg.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in seg.clip.parameters())
    assert all(p.device.type == "cuda" for p in seg.proposer.model.parameters())
    img = _image(coco_sample)
    st = seg.set_image(img)
    assert st.features.device.type == "cuda" and st.features.dtype == torch.float32
    assert st.gem_tokens.device.type == "cuda"
    assert st.num_proposals >= 1
    pred = seg.predict("the person on the left")
    assert pred.found and pred.mask.shape == img.shape[:2]
    # with the COCO masks as proposals too
    st = seg.set_image(img, proposals=_resized_masks(coco_sample[1], img.shape[:2]))
    assert torch.isfinite(st.features).all()


def _resized_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(masks[:, None].astype(np.float32))
    return (torch.nn.functional.interpolate(t, size=size)[:, 0] > 0.5).numpy()


def test_auto_dtype_on_cuda(tiny_env):
    from hybridgl import Segmenter

    seg = Segmenter.from_pretrained(sam=None, device="cuda", dtype="auto")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert seg.dtype == expected


def test_no_host_round_trips_in_the_proposal_loop(coco_sample):
    """hybrid_clip.encode_proposals on device masks never synchronises with the host
    (torch's sync debug mode raises on any synchronising call), and runs every proposal of
    an image in one ViT pass when memory allows."""
    from hybridgl.config import get_preset
    from hybridgl.models import hybrid_clip
    from hybridgl.models.clip import build_clip, randomize_clip

    cfg = get_preset("paper").with_options(feature_batch=2)
    clip = randomize_clip(build_clip("ViT-B-16", "tiny"), 0).cuda().eval()
    img = _image(coco_sample)
    masks = torch.from_numpy(_resized_masks(coco_sample[1], img.shape[:2])).cuda()
    n = int(masks.shape[0])
    assert n >= 4
    calls = []
    plain = hybrid_clip.hybrid_features

    def counted(*a, **k):
        calls.append(1)
        return plain(*a, **k)

    hybrid_clip.hybrid_features = counted
    try:
        with torch.no_grad():
            hybrid_clip.encode_proposals(clip.visual, img, masks, cfg, torch.device("cuda"))
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                feats = hybrid_clip.encode_proposals(
                    clip.visual, img, masks, cfg, torch.device("cuda")
                )
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        hybrid_clip.hybrid_features = plain
    assert feats.shape[0] == n and feats.device.type == "cuda"
    assert len(calls) == 2  # one pass per call, not n / feature_batch


def test_cuda_batches_give_the_chunked_features(coco_sample):
    """One pass and chunks of feature_batch give the same features (float tolerance)."""
    from hybridgl.config import get_preset
    from hybridgl.models import hybrid_clip
    from hybridgl.models.clip import build_clip, randomize_clip

    img = _image(coco_sample)
    masks = torch.from_numpy(_resized_masks(coco_sample[1], img.shape[:2]))
    clip = randomize_clip(build_clip("ViT-B-16", "tiny"), 0).eval()
    cfg = get_preset("paper")
    with torch.no_grad():
        cpu = hybrid_clip.encode_proposals(clip.visual, img, masks, cfg, torch.device("cpu"))
        gpu = hybrid_clip.encode_proposals(
            clip.cuda().visual, img, masks, cfg, torch.device("cuda")
        )
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)


def test_video_tracker_on_cuda():
    """The SAM 2.1 video tracker (tiny random weights) on CUDA follows the CPU's answers."""
    pytest.importorskip("transformers")
    from hybridgl.video.hf_trackers import build_tracker

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(20)]
    mask = np.zeros((60, 80), bool)
    mask[15:40, 20:50] = True
    cpu = build_tracker("sam2.1_hiera_tiny", random_mode="tiny", seed=3, device="cpu")
    gpu = build_tracker("sam2.1_hiera_tiny", random_mode="tiny", seed=3, device="cuda")
    assert all(p.device.type == "cuda" for p in gpu.model.parameters())
    for i, f in enumerate(frames):
        a = cpu.step(f, {1: mask} if i == 0 else None)
        b = gpu.step(f, {1: mask} if i == 0 else None)
        assert torch.allclose(gpu.last_logits.float().cpu(), cpu.last_logits, rtol=1e-2, atol=5e-2)
        assert b.presence[1] == pytest.approx(a.presence[1], abs=1e-2)
    assert gpu.memory_frames() <= gpu.memory_limit

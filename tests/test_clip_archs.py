"""CLIP architectures beyond the paper's ViT-B/16 (ViT-L/14; BiomedCLIP, a timm image tower
and a BERT text tower): the same hybrid features, GEM and text side, checked on tiny random
models of each architecture (same patch size, token grid and number of blocks as the real
one, small widths), built by the code that builds the real ones."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hybridgl.config import MethodConfig
from hybridgl.models import hybrid_clip
from hybridgl.models.clip import CLIP_ARCHS, build_clip, build_clip_and_tokenizer, randomize_clip
from hybridgl.models.timm_vit import vit_view

torch.set_grad_enabled(False)


@pytest.fixture(scope="module", params=sorted(CLIP_ARCHS))
def arch_clip(request):
    if request.param == "BiomedCLIP":
        pytest.importorskip("timm")
        pytest.importorskip("transformers")
    model, _tokenizer = build_clip_and_tokenizer(request.param, "tiny")
    return request.param, randomize_clip(model, seed=5).eval()


def _image(h: int = 80, w: int = 112) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_tiny_models_have_the_real_token_grid_and_depth(arch_clip) -> None:
    name, model = arch_clip
    patch, blocks = CLIP_ARCHS[name]
    visual = vit_view(model.visual)
    assert visual.conv1.kernel_size[0] == patch
    assert len(visual.transformer.resblocks) == blocks
    assert visual.positional_embedding.shape[0] == (224 // patch) ** 2 + 1


def test_full_masks_reduce_to_plain_clip(arch_clip) -> None:
    """Where the method reduces to plain CLIP it equals open_clip's encode_image."""
    name, model = arch_clip
    img = _image()
    full = torch.ones((2, *img.shape[:2]), dtype=torch.bool)
    img_t = torch.from_numpy(img).permute(2, 0, 1)
    patch = CLIP_ARCHS[name][0]
    _, lviews, m_grid = hybrid_clip.make_views(img_t, img_t, full, MethodConfig(), patch=patch)
    assert m_grid.shape[1:] == (224 // patch, 224 // patch)
    plain = model.encode_image(lviews)
    for mode in ("crop", "token_masking"):
        ours = hybrid_clip.encode_proposals(
            model.visual, img, full, MethodConfig(fusion=mode), torch.device("cpu")
        )
        torch.testing.assert_close(ours, plain, atol=2e-4, rtol=2e-4)


def test_segmenter_runs_on_each_architecture(arch_clip, monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = arch_clip
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    seg = Segmenter.from_pretrained(clip=name, sam=None, device="cpu", gem_size=112)
    img = _image()
    masks = np.zeros((3, *img.shape[:2]), bool)
    masks[0, :40], masks[1, 40:], masks[2, :, :50] = True, True, True
    state = seg.encode_image(img, masks)
    assert state.gem_grid == 112 // CLIP_ARCHS[name][0]
    assert state.features.shape == (3, seg.clip.visual.output_dim)
    pred = seg.predict("the left part", state=state)
    assert pred.found and pred.index in (0, 1, 2)
    assert seg.model_info["clip"] == name
    assert os.environ["HYBRIDGL_RANDOM_WEIGHTS"] == "tiny"


def test_registry_and_options_know_each_architecture() -> None:
    from hybridgl import weights
    from hybridgl.spec import CLIP_MODELS

    assert tuple(CLIP_MODELS) == tuple(CLIP_ARCHS)
    assert weights.clip_checkpoint_names("ViT-L-14") == [
        "clip_vit_l14_openai",
        "clip_vit_l14_openai_hf",
    ]
    assert weights.clip_checkpoint_names("ViT-L/14") == weights.clip_checkpoint_names("vit-l-14")
    entry = weights.REGISTRY["clip_vit_l14_openai"]
    # OpenAI names the download folder after the file's SHA-256
    assert entry.sha256 is not None and entry.sha256 in entry.url
    assert weights.clip_checkpoint_for_source("ViT-L-14", "hf") == "clip_vit_l14_openai_hf"
    with pytest.raises(ValueError, match="known"):
        build_clip("ViT-H-14", "tiny")

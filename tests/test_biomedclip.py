"""BiomedCLIP's pieces: the timm ViT seen under open_clip's names (GEM and the blocks equal
timm's own forward), the BERT text side, the registry entries and the refusals.
(The hybrid features' parity with encode_image for every architecture is in
tests/test_clip_archs.py.)"""

from __future__ import annotations

import re
import sys

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("transformers")

from hybridgl.models import gem, vit_ops  # noqa: E402
from hybridgl.models.clip import build_clip_and_tokenizer, randomize_clip  # noqa: E402
from hybridgl.models.timm_vit import TimmViTView, vit_view  # noqa: E402

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def biomed():
    model, tokenizer = build_clip_and_tokenizer("BiomedCLIP", "tiny")
    return randomize_clip(model, seed=11).eval(), tokenizer


def test_the_view_shares_the_towers_parameters(biomed) -> None:
    model, _ = biomed
    view = vit_view(model.visual)
    assert isinstance(view, TimmViTView) and vit_view(view) is view
    trunk = model.visual.trunk
    assert view.conv1 is trunk.patch_embed.proj and view.ln_post is trunk.norm
    assert view.positional_embedding.data_ptr() == trunk.pos_embed.data_ptr()
    blk = view.transformer.resblocks[3]
    assert blk.attn.in_proj_weight is trunk.blocks[3].attn.qkv.weight
    assert blk.attn.out_proj is trunk.blocks[3].attn.proj
    assert view.output_dim == model.visual.output_dim == 32
    torch.testing.assert_close(view.proj, model.visual.head.proj.weight.t())


@pytest.mark.slow
def test_blocks_and_gem_without_self_self_equal_timms_forward(biomed) -> None:
    model, _ = biomed
    trunk = model.visual.trunk
    view = vit_view(model.visual)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = vit_ops.embed(view, x)
    for blk in vit_ops.blocks(view):
        tokens = vit_ops.run_block(blk, tokens)
    own = trunk.forward_features(x)  # timm: patch embed, positions, blocks, final norm
    torch.testing.assert_close(view.ln_post(tokens), own, atol=1e-5, rtol=1e-5)
    # GEM of depth 1 runs no self-self block: the patch tokens of the plain forward
    ours = gem.gem_patch_tokens(model.visual, x, depth=1)
    torch.testing.assert_close(ours, model.visual.head.proj(own[:, 1:]), atol=1e-5, rtol=1e-5)
    # and a real GEM pass runs at another grid (positions resampled)
    assert gem.gem_patch_tokens(model.visual, x[:, :, :112, :112], depth=7).shape == (2, 49, 32)


@pytest.mark.slow
def test_text_side_is_the_models_own_encode_text(biomed, monkeypatch) -> None:
    model, tokenizer = biomed
    tokens = tokenizer(["the left kidney"])
    assert tokens.shape == (1, 256) and int(tokens[0, 0]) == 2  # [CLS] first, BERT style
    monkeypatch.setenv("HYBRIDGL_RANDOM_WEIGHTS", "tiny")
    from hybridgl import Segmenter

    seg = Segmenter.from_pretrained(clip="BiomedCLIP", sam=None, device="cpu", seed=11)
    emb = seg.encode_texts(["the left kidney"])
    torch.testing.assert_close(emb[0], seg.clip.encode_text(seg.tokenizer(["the left kidney"]))[0])
    assert seg.model_info["clip"] == "BiomedCLIP"


@pytest.mark.slow
def test_unsupported_timm_towers_are_refused() -> None:
    from open_clip.timm_model import TimmModel

    avg = TimmModel("vit_tiny_patch16_224", embed_dim=8, pool="avg", proj="linear")
    with pytest.raises(ValueError, match="pooling other than the class token"):
        vit_view(avg)
    mlp = TimmModel("vit_tiny_patch16_224", embed_dim=8, pool="", proj="mlp")
    with pytest.raises(ValueError, match="bias-free linear projection"):
        vit_view(mlp)


def test_registry_entries_and_the_option() -> None:
    from hybridgl import weights
    from hybridgl.cli.options import add_model_args
    from hybridgl.models.custom_clip import CUSTOM_CLIPS

    entry = weights.REGISTRY[weights.clip_checkpoint_name("BiomedCLIP")]
    assert entry.hub_repo == "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert CUSTOM_CLIPS["BiomedCLIP"].hub_id == f"hf-hub:{entry.hub_repo}"
    assert re.fullmatch(r"[0-9a-f]{40}", entry.revision or "")
    assert set(entry.hub_files) == {"open_clip_config.json", "open_clip_pytorch_model.bin"}
    text = weights.REGISTRY[CUSTOM_CLIPS["BiomedCLIP"].text_checkpoint]
    assert text.kind == "text" and {"config.json", "vocab.txt"} <= set(text.hub_files)
    assert weights.clip_checkpoint_names("BiomedCLIP") == [entry.name]
    import argparse

    p = argparse.ArgumentParser()
    add_model_args(p)
    assert p.parse_args(["--clip", "BiomedCLIP"]).clip == "BiomedCLIP"


def test_missing_timm_is_the_one_line_extra_message(monkeypatch) -> None:
    from hybridgl.models.custom_clip import build_custom_clip

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=re.escape('pip install "hybridgl[biomed]"')):
        build_custom_clip("BiomedCLIP", "tiny")


def test_full_size_reads_the_published_config(tmp_path) -> None:
    """The full build path on folders shaped like the two Hub snapshots (tiny contents)."""
    import json

    from hybridgl.errors import WeightsError
    from hybridgl.models.custom_clip import CUSTOM_CLIPS, build_custom_clip, tiny_text_folder

    clip_dir, text_dir = tmp_path / "clip", tmp_path / "text"
    clip_dir.mkdir()
    text_dir.mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        build_custom_clip("BiomedCLIP", "full", clip_dir, text_dir)
    tiny_text_folder(text_dir)
    with pytest.raises(WeightsError, match="open_clip_config.json"):
        build_custom_clip("BiomedCLIP", "full", clip_dir, text_dir)
    cfg = {"model_cfg": {**CUSTOM_CLIPS["BiomedCLIP"].tiny_cfg, "custom_text": True}}
    cfg["model_cfg"]["text_cfg"] = {**cfg["model_cfg"]["text_cfg"], "hf_model_name": "x/y"}
    (clip_dir / "open_clip_config.json").write_text(json.dumps(cfg))
    model, tokenizer = build_custom_clip("BiomedCLIP", "full", clip_dir, text_dir)
    assert model.visual.output_dim == 32 and tokenizer(["a"]).shape == (1, 256)

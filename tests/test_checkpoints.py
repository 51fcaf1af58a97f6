"""Checkpoint loading: the real code paths on files made from random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridgl.errors import WeightsError
from hybridgl.models.clip import build_clip, load_clip_checkpoint, randomize_clip
from hybridgl.models.sam import build_sam, load_sam_checkpoint, random_sam


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_clip_state_dict_round_trip_and_openai_metadata_keys(tmp_path):
    src = randomize_clip(build_clip("ViT-B-16", "tiny"), seed=1)
    state = dict(src.state_dict())
    # OpenAI's state dicts carry three metadata entries that are not parameters
    state.update(
        input_resolution=torch.tensor(224),
        context_length=torch.tensor(77),
        vocab_size=torch.tensor(49408),
    )
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    dst = load_clip_checkpoint(build_clip("ViT-B-16", "tiny"), path)
    assert _same_params(src, dst)


@pytest.mark.slow
def test_clip_torchscript_archive(tmp_path):
    """OpenAI ships TorchScript archives: read them with torch.jit.load, keep the weights."""
    src = randomize_clip(build_clip("ViT-B-16", "tiny"), seed=2).eval()
    traced = torch.jit.trace(
        src,
        (torch.zeros(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)),
        check_trace=False,
        strict=False,
    )
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(traced, str(path))
    with pytest.raises(RuntimeError):  # what a plain weights_only load would say
        torch.load(path, weights_only=True)
    dst = load_clip_checkpoint(build_clip("ViT-B-16", "tiny"), path)
    assert _same_params(src, dst)


def test_clip_missing_or_unexpected_keys_fail(tmp_path):
    state = dict(build_clip("ViT-B-16", "tiny").state_dict())
    state["visual.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="unexpected"):
        load_clip_checkpoint(build_clip("ViT-B-16", "tiny"), path)
    state.pop("visual.extra")
    state.pop("visual.proj")
    torch.save(state, path)
    with pytest.raises(WeightsError, match="missing"):
        load_clip_checkpoint(build_clip("ViT-B-16", "tiny"), path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot load"):
        load_clip_checkpoint(build_clip("ViT-B-16", "tiny"), path)


def test_sam_checkpoint_round_trip_and_strictness(tmp_path):
    src = random_sam("tiny", seed=0)
    path = tmp_path / "sam.pth"
    torch.save(src.state_dict(), path)
    assert _same_params(src, load_sam_checkpoint(build_sam("tiny"), path))
    state = dict(src.state_dict())
    state["unexpected.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(WeightsError, match="unexpected"):
        load_sam_checkpoint(build_sam("tiny"), path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load"):
        load_sam_checkpoint(build_sam("tiny"), path)


@pytest.mark.parametrize("arch,params_m", [("vit_b", 93.7), ("vit_l", 312.3), ("vit_h", 641.1)])
def test_full_size_sam_architectures(arch, params_m):
    # official parameter counts: ViT-B 93.7M, ViT-L 312.3M, ViT-H 641.1M (so official
    # checkpoints fit); built on the meta device: shapes without 2.6 GB of memory
    with torch.device("meta"):
        sam = build_sam(arch)
    n = sum(p.numel() for p in sam.parameters()) / 1e6
    assert n == pytest.approx(params_m, abs=0.1)
    # the real sizes keep SAM's official 1024 px input (only the tiny test SAM is smaller)
    assert sam.image_encoder.img_size == 1024
    assert sam.prompt_encoder.image_embedding_size == (64, 64)


def test_tiny_sam_is_small_and_keeps_masks():
    """The test SAM runs at 256 px; with the paper's generator settings it still proposes."""
    from hybridgl.config import SamConfig
    from hybridgl.models.proposals import SamV1Backend as SamProposer

    sam = random_sam("tiny", seed=1).eval()
    assert sam.image_encoder.img_size == 256
    assert sam.prompt_encoder.image_embedding_size == (16, 16)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    masks, boxes = SamProposer(sam, SamConfig(min_mask_region_area=0))(image)
    assert masks.shape[1:] == (48, 64) and len(masks) == len(boxes) >= 1


@pytest.mark.slow
def test_full_size_clip_architecture():
    model = build_clip("ViT-B-16", "full")
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(149.6, abs=0.1)  # OpenAI ViT-B/16: 149.6M parameters


def test_clip_hub_copy_loads_with_strict_keys(tmp_path, monkeypatch):
    """The Hugging Face Hub copy (timm/vit_base_patch16_clip_224.openai) is open_clip's
    state dict as safetensors, in a folder; it loads into the same model with strict keys
    and is found offline in a weights dir when OpenAI's file is absent."""
    from safetensors.torch import save_file

    from hybridgl import weights

    ck = weights.get_checkpoint("clip_vit_b16_openai_hf")
    folder = tmp_path / "w" / ck.filename
    folder.mkdir(parents=True)
    src = randomize_clip(build_clip("ViT-B-16", "tiny"), seed=4)
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    for path in (folder, folder / "open_clip_model.safetensors"):
        assert _same_params(src, load_clip_checkpoint(build_clip("ViT-B-16", "tiny"), path))
    state["visual.extra"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsError, match="unexpected"):
        load_clip_checkpoint(build_clip("ViT-B-16", "tiny"), bad)

    monkeypatch.setenv("HYBRIDGL_OFFLINE", "1")
    monkeypatch.setenv("HYBRIDGL_CACHE_DIR", str(tmp_path / "cache"))
    assert weights.resolve_clip("ViT-B-16", weights_dir=tmp_path / "w") == folder
    assert weights.resolve_clip("ViT-B-16", path=folder) == folder
    openai = weights.get_checkpoint("clip_vit_b16_openai")
    assert weights.clip_checkpoint_names("ViT-B-16") == [openai.name, ck.name]
    with pytest.raises(WeightsError) as e:  # neither copy present: both are named
        weights.resolve_clip("ViT-B-16", weights_dir=tmp_path / "empty")
    assert openai.filename in str(e.value) and "--source hf" in str(e.value)

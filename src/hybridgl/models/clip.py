"""Building and loading the CLIP model (open_clip's ViT-B/16 with quick-GELU, the paper's;
or ViT-L/14), and its trimmed text encoder.

One CLIP serves the hybrid features, the text encoder and GEM.
"""

from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hybridgl.errors import WeightsError
from hybridgl.models import load_checkpoint_state

if TYPE_CHECKING:
    from open_clip.model import CLIP

log = logging.getLogger(__name__)

# Keys of OpenAI's state dicts that are metadata, not parameters.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


#: CLIP ViTs the method runs on: name -> (patch size, vision blocks). ViT-B-16 and
#: ViT-L-14: OpenAI's weights, quick-GELU, open_clip's own ViT; ViT-B-16 is the paper's.
#: BiomedCLIP: a timm ViT-B/16 image tower and a PubMedBERT text tower
#: (:mod:`hybridgl.models.custom_clip`). The method's block indices (``masking_block``,
#: ``gem_depth``) are the paper's for its 12 blocks and are used as given for the others.
CLIP_ARCHS: dict[str, tuple[int, int]] = {
    "ViT-B-16": (16, 12),
    "ViT-L-14": (14, 24),
    "BiomedCLIP": (16, 12),
}


def is_custom_text(model_name: str) -> bool:
    """True for the CLIPs built by :mod:`hybridgl.models.custom_clip` (timm + HF text)."""
    from hybridgl.models.custom_clip import CUSTOM_CLIPS

    return model_name in CUSTOM_CLIPS


def build_clip_and_tokenizer(
    model_name: str = "ViT-B-16",
    size: str = "full",
    checkpoint: str | Path | None = None,
    text_dir: str | Path | None = None,
) -> tuple[torch.nn.Module, Any]:
    """A CLIP with random values (load weights next) and its tokenizer.

    ``checkpoint`` and ``text_dir`` (the resolved folders) are read only by the CLIPs of
    :mod:`hybridgl.models.custom_clip`, whose architecture and vocabulary come with them.
    """
    if is_custom_text(model_name):
        from hybridgl.models.custom_clip import build_custom_clip

        model, tokenizer = build_custom_clip(model_name, size, checkpoint, text_dir)
        return model, tokenizer
    return build_clip(model_name, size), get_tokenizer(model_name)


def build_clip(model_name: str = "ViT-B-16", size: str = "full") -> torch.nn.Module:
    """Build an open_clip CLIP with random values.

    Args:
        model_name: a key of :data:`CLIP_ARCHS` (``ViT-B-16``, the method's; ``ViT-L-14``).
        size: ``full`` for the real architecture (ViT-B/16: 12 blocks, width 768, 512-d
            embedding; ViT-L/14: 24 blocks, width 1024, 768-d embedding) or ``tiny``, a
            test device with the same token grid (224 px, the same patch size and number
            of blocks) and small widths.
    """
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    if model_name not in CLIP_ARCHS:
        raise ValueError(f"unsupported CLIP model {model_name!r}; known: {', '.join(CLIP_ARCHS)}")
    if is_custom_text(model_name):
        raise ValueError(f"{model_name} needs build_clip_and_tokenizer (its own vocabulary)")
    patch, layers = CLIP_ARCHS[model_name]
    if size == "full":
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True)
    elif size == "tiny":
        model = CLIP(
            embed_dim=32,
            vision_cfg=CLIPVisionCfg(
                layers=layers, width=64, head_width=32, patch_size=patch, image_size=224
            ),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
            quick_gelu=True,
        )
    else:
        raise ValueError(f"unknown CLIP size {size!r}")
    return model


def randomize_clip(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random values for every parameter; logit scale set to OpenAI's ``ln(100)``.

    Matrices get ``N(0, 0.02)`` (embeddings ``N(0, 0.02)`` too), norm weights 1 and biases
    0, so that activations stay in a sane range through all blocks.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(math.log(100.0))
            elif p.ndim >= 2 or "embedding" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return model


# open_clip's weight files in a Hugging Face Hub snapshot (timm/vit_base_patch16_clip_224.openai)
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():  # a Hub snapshot folder
        for name in _HUB_FILES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"no {' or '.join(_HUB_FILES)} in {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        with zipfile.ZipFile(path) as zf:
            torchscript = any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    else:
        torchscript = False
    if torchscript:
        # OpenAI ships TorchScript archives; torch.jit.load rebuilds the module from its
        # serialized code without unpickling arbitrary Python objects.
        module = torch.jit.load(str(path), map_location="cpu")
        return {k: v for k, v in module.state_dict().items()}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_clip_checkpoint(
    model: torch.nn.Module, path: Path, model_name: str = "ViT-B-16"
) -> torch.nn.Module:
    """Load OpenAI's ``ViT-B-16.pt`` (TorchScript), a plain state dict, or the Hugging Face
    Hub copy (``open_clip_model.safetensors``, or the folder holding it) into ``model``.

    Missing or unexpected keys fail loudly. Values are converted to the model's float32.
    """
    try:
        state = _read_state_dict(Path(path))
    except Exception as e:
        raise WeightsError(f"cannot load CLIP checkpoint {path}: {e}") from None
    for k in _OPENAI_EXTRA_KEYS:
        state.pop(k, None)
    # buffers the model rebuilds itself (open_clip's text attn_mask is not persistent)
    # may be present in a traced archive: they carry no weights
    persistent = set(model.state_dict())
    for name, _ in model.named_buffers():
        if name not in persistent:
            state.pop(name, None)
    load_checkpoint_state(model, state, f"CLIP checkpoint {path}", model_name)
    return model


def get_tokenizer(model_name: str = "ViT-B-16"):
    """CLIP's BPE tokenizer; expressions longer than 77 tokens are truncated (end token kept)."""
    import open_clip

    return open_clip.get_tokenizer(model_name)


def encode_text_trimmed(clip: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text`` run on the first ``n`` token positions only.

    ``n`` = 1 + the last end-of-text position in the batch. CLIP's text transformer is
    causal and pools at the end-of-text token (the largest token id), so positions after
    it never reach the output: dropping the padding gives the same embeddings (float
    rounding aside) for a fraction of the work (77 -> about 10 positions for a referring
    expression). Models that pool differently use ``encode_text``.

    Args:
        clip: open_clip ``CLIP``.
        tokens: ``(B, 77)`` int64 token ids from :func:`get_tokenizer`.

    Returns:
        ``(B, E)`` text embeddings (unnormalised), as ``clip.encode_text`` returns them.
    """
    mask = getattr(clip, "attn_mask", None)
    if (
        getattr(clip, "text_pool_type", None) != "argmax"
        or not isinstance(mask, torch.Tensor)
        or not hasattr(clip, "token_embedding")
        or tokens.ndim != 2
        or tokens.shape[0] == 0
    ):
        out: torch.Tensor = clip.encode_text(tokens)
        return out
    n = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :n]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:n].to(cast)
    x = clip.transformer(x, attn_mask=mask[:n, :n])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

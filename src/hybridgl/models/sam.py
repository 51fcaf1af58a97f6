"""SAM v1 builders (official sizes plus a tiny test size) and checkpoint loading.

Proposals come from ``segment_anything.SamAutomaticMaskGenerator`` unchanged, with the
settings of :class:`hybridgl.config.SamConfig`, behind the proposal-backend interface of
:mod:`hybridgl.models.proposals` (:class:`~hybridgl.models.proposals.SamV1Backend`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from hybridgl.errors import WeightsError
from hybridgl.models import load_checkpoint_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamArch:
    """Widths of one SAM size. ``tiny`` is a test device, not a real model.

    ``image_size`` is SAM's input side (the longest image side is resized to it): 1024 for
    every real size. The tiny test SAM runs at 256 px (a 16 x 16 embedding grid, 64 x 64
    low-resolution masks), so that the automatic generator, still with the paper's
    settings, costs about a second per photo on a CPU instead of several.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    image_size: int = 1024


SAM_ARCHS: dict[str, SamArch] = {
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "tiny": SamArch(
        32,
        2,
        2,
        (1,),
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_heads=2,
        iou_head_hidden_dim=32,
        image_size=256,
    ),
}


# Elements of one attention-score block in the global-attention layers (64 Mi floats,
# 256 MiB): queries are split over heads so that ViT-H's 16 x 4096 x 4096 scores (1 GiB,
# materialised three times by SAM's own code) never exist at once.
_ATTN_BLOCK_ELEMENTS = 64 * 2**20


def _lean_attention_class():
    from segment_anything.modeling.image_encoder import Attention, add_decomposed_rel_pos

    class LeanAttention(Attention):
        """SAM's image-encoder attention computed a few heads at a time.

        The same operations as ``Attention.forward`` per head (heads are independent), so
        the output is the same; peak memory of a global-attention layer drops from three
        ``(B * heads, L, L)`` float tensors to three slices of about 256 MiB.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, _ = x.shape
            n = h * w
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)
            step = max(1, _ATTN_BLOCK_ELEMENTS // (n * n))
            if step >= q.shape[0]:
                return super().forward(x)
            out = torch.empty_like(v)
            for s in range(0, q.shape[0], step):
                qs = q[s : s + step]
                attn = (qs * self.scale) @ k[s : s + step].transpose(-2, -1)
                if self.use_rel_pos:
                    attn = add_decomposed_rel_pos(
                        attn, qs, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w)
                    )
                out[s : s + step] = attn.softmax(dim=-1) @ v[s : s + step]
            y = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
            return self.proj(y)

    return LeanAttention


_LEAN_ATTENTION: type | None = None


def use_lean_attention(sam: Any) -> Any:
    """Make the image encoder's attention layers compute a few heads at a time (same
    results, less peak memory: about 2 GiB less with ViT-H). Parameters and state-dict keys
    are unchanged."""
    global _LEAN_ATTENTION
    if _LEAN_ATTENTION is None:
        _LEAN_ATTENTION = _lean_attention_class()
    from segment_anything.modeling.image_encoder import Attention

    for module in sam.image_encoder.modules():
        if type(module) is Attention:
            module.__class__ = _LEAN_ATTENTION
    return sam


def build_sam(arch: str) -> Any:
    """Build an uninitialised-from-checkpoint SAM of the named size (``vit_h``, ``vit_l``,
    ``vit_b`` or ``tiny``) with patch size 16 and the size's input side (the official 1024
    for the real sizes, 256 for ``tiny``)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    if arch not in SAM_ARCHS:
        raise ValueError(f"unknown SAM size {arch!r}; choose one of {sorted(SAM_ARCHS)}")
    a = SAM_ARCHS[arch]
    image_size, patch = a.image_size, 16
    grid = image_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a.encoder_depth,
            embed_dim=a.encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a.encoder_num_heads,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=a.global_attn_indexes,
            window_size=14,
            out_chans=a.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a.decoder_depth,
                embedding_dim=a.prompt_embed_dim,
                mlp_dim=a.decoder_mlp_dim,
                num_heads=a.decoder_heads,
            ),
            transformer_dim=a.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=a.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return use_lean_attention(sam)


def random_sam(arch: str, seed: int) -> Any:
    """A SAM of the named size with seeded random weights (a test and benchmark device).

    PyTorch's default initialisation under ``seed``, plus two changes so that SAM's own
    thresholds keep at least some masks: the positional embedding is drawn from
    ``N(0, 0.02)`` (SAM leaves it at zero), the hypernetwork outputs are scaled by 1000
    (stable, far-from-zero mask logits) and the IoU head predicts about 1. The masks mean
    nothing; they exercise the proposal path with the paper's settings.

    For ``tiny`` only, the IoU head predicts about 1 for the first of SAM's three multimask
    outputs and about 0 for the other two, so the generator keeps a third of the masks
    (random masks are fragmented; their RLEs dominate the generator's time).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(arch)
        with torch.no_grad():
            sam.image_encoder.pos_embed.normal_(0.0, 0.02)
            for mlp in sam.mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.mul_(1000.0)
            sam.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(1.0)
            if arch == "tiny":  # output 0 is the single-mask token; 1..3 are multimask
                sam.mask_decoder.iou_prediction_head.layers[-1].bias[2:].fill_(0.0)
    return sam


def load_sam_checkpoint(sam: Any, path: Path) -> Any:
    """Load an official SAM ``.pth`` with ``weights_only=True``; missing or unexpected keys fail."""
    try:
        try:  # memory-mapped: the 2.4 GiB ViT-H file is not held twice while loading
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, wrong format
        raise WeightsError(f"cannot load SAM checkpoint {path}: {e}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    load_checkpoint_state(sam, state, f"SAM checkpoint {path}", "the architecture")
    return sam

"""Functional pieces of open_clip's vision transformer, so that the hybrid encoder and
GEM can run blocks with their own attention masks and streams.

Each function computes what the corresponding open_clip module computes (tests check
``encode_image`` parity); tensors are batch-first ``(B, L, D)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer


def embed(
    visual: VisionTransformer, pixels: torch.Tensor, pos_embed: torch.Tensor | None = None
) -> torch.Tensor:
    """Patch conv, class token, positional embedding and ``ln_pre``.

    Args:
        visual: open_clip ``VisionTransformer``.
        pixels: ``(B, 3, S, S)`` normalised images.
        pos_embed: ``(1 + G*G, D)`` positional embedding to use instead of the model's
            (GEM's resampled one).
    Returns:
        ``(B, 1 + G*G, D)`` tokens.
    """
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    x = x.flatten(2).transpose(1, 2)  # (B, G*G, D)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding if pos_embed is None else pos_embed
    x = x + pos.to(x.dtype)
    return visual.ln_pre(x)


def qkv(
    block: ResidualAttentionBlock, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head q, k, v ``(B, heads, L, head_dim)`` from the block's in-projection."""
    attn = block.attn
    b, n, d = h.shape
    heads = attn.num_heads
    x = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    x = x.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    return x[0], x[1], x[2]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, heads, L, hd)`` -> ``(B, L, heads * hd)``."""
    b, h, n, hd = x.shape
    return x.transpose(1, 2).reshape(b, n, h * hd)


def attention(
    block: ResidualAttentionBlock, h: torch.Tensor, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head self-attention of ``block`` on ``h`` (already ``ln_1``-normalised).

    Args:
        allowed: optional ``(B, 1, L, L)`` bool, True where a query may attend a key.
    """
    q, k, v = qkv(block, h)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return block.attn.out_proj(merge_heads(o))


def mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def run_block(
    block: ResidualAttentionBlock, x: torch.Tensor, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """One residual attention block, optionally with an attention mask."""
    x = x + block.ls_1(attention(block, block.ln_1(x), allowed))
    return mlp_residual(block, x)


def project_cls(visual: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """``ln_post`` of the class token, then the projection: ``(B, L, D)`` -> ``(B, E)``."""
    y = visual.ln_post(x[:, 0])
    return y @ visual.proj if visual.proj is not None else y


def blocks(visual: VisionTransformer) -> list[ResidualAttentionBlock]:
    return list(visual.transformer.resblocks)

"""GEM (Grounding Everything Module, Bousselham et al., CVPR 2024) on the shared CLIP.

A parallel self-self attention path over the last ``depth - 1`` blocks turns CLIP's
patch tokens into text-groundable features (METHOD.md section 6). No extra weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hybridgl.coherence import square_padding
from hybridgl.config import CLIP_MEAN, CLIP_STD
from hybridgl.models import vit_ops
from hybridgl.models.timm_vit import vit_view

if TYPE_CHECKING:
    from open_clip.transformer import VisionTransformer


def gem_input(image: np.ndarray, size: int, keep_aspect: bool = False) -> torch.Tensor:
    """Resize with PIL bicubic to ``size`` x ``size`` and normalise with CLIP's mean/std.

    With ``keep_aspect`` the image is first centred on a square of CLIP's mean colour.
    Returns ``(1, 3, size, size)`` float32.
    """
    pil = Image.fromarray(image)
    if keep_aspect:
        side, top, left = square_padding(*image.shape[:2])
        fill = tuple(int(round(c * 255)) for c in CLIP_MEAN)
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(pil, (left, top))
        pil = canvas
    pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def resample_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Class position kept; the patch positions resampled bicubic with antialias."""
    cls, patches = pos[:1], pos[1:]
    old = int(round(patches.shape[0] ** 0.5))
    d = patches.shape[1]
    if old == grid:
        return pos
    p = patches.reshape(1, old, old, d).permute(0, 3, 1, 2).float()
    p = F.interpolate(p, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    p = p.permute(0, 2, 3, 1).reshape(grid * grid, d).to(pos.dtype)
    return torch.cat([cls, p], dim=0)


def self_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inv_temp: torch.Tensor, iters: int = 1
) -> torch.Tensor:
    """GEM's self-self attention, ``(B, heads, L, hd)`` each; returns the same shape.

    For each of q, k and v: ``iters`` rounds of normalise then ``softmax(x x^T t) x``;
    normalise again; ``softmax(x x^T t) v``. The three results are averaged.
    ``inv_temp`` broadcasts against ``(B, heads, L, L)``.
    """
    outs = []
    for x in (q, k, v):
        for _ in range(iters):
            x = F.normalize(x, dim=-1)
            x = torch.softmax(x @ x.transpose(-2, -1) * inv_temp, dim=-1) @ x
        x = F.normalize(x, dim=-1)
        outs.append(torch.softmax(x @ x.transpose(-2, -1) * inv_temp, dim=-1) @ v)
    return (outs[0] + outs[1] + outs[2]) / 3


@torch.no_grad()
def gem_patch_tokens(
    visual: VisionTransformer, pixels: torch.Tensor, depth: int = 7, iters: int = 1
) -> torch.Tensor:
    """GEM patch tokens after ``ln_post`` and the projection.

    Args:
        visual: open_clip ``VisionTransformer`` (or a timm ViT tower,
            :mod:`hybridgl.models.timm_vit`).
        pixels: ``(B, 3, S, S)`` from :func:`gem_input`.
        depth: GEM depth; the last ``depth - 1`` blocks get the self-self path.
    Returns:
        ``(B, G*G, E)`` tokens, G = S / patch size.
    """
    visual = vit_view(visual)
    patch = visual.conv1.kernel_size[0]
    grid = pixels.shape[-1] // patch
    pos = resample_pos_embed(visual.positional_embedding, grid)
    x = vit_ops.embed(visual, pixels, pos_embed=pos)
    bl = vit_ops.blocks(visual)
    first = len(bl) - (depth - 1)
    for blk in bl[:first]:
        x = vit_ops.run_block(blk, x)
    x_gem = x
    for i, blk in enumerate(bl[first:], start=first):
        h = blk.ln_1(x)
        q, k, v = vit_ops.qkv(blk, h)
        head_dim = q.shape[-1]
        # temperature: mean token norm of the attention input, times head_dim^-0.5
        inv_temp = h.norm(dim=-1).mean(dim=-1).view(-1, 1, 1, 1) * head_dim**-0.5
        ss = self_self_attention(q, k, v, inv_temp, iters)
        x_gem = x_gem + blk.ls_1(blk.attn.out_proj(vit_ops.merge_heads(ss)))
        if i < len(bl) - 1:  # the original stream after the last block is not used
            ori = F.scaled_dot_product_attention(q, k, v)
            x = x + blk.ls_1(blk.attn.out_proj(vit_ops.merge_heads(ori)))
            x = vit_ops.mlp_residual(blk, x)
    tokens = visual.ln_post(x_gem[:, 1:])
    return tokens @ visual.proj if visual.proj is not None else tokens

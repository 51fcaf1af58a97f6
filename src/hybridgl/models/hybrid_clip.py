"""The two views per proposal (METHOD.md section 2) and the hybrid global-local CLIP
encoder (section 3), batched over proposals in chunks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from hybridgl.coherence import square_padding
from hybridgl.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, MethodConfig
from hybridgl.models import vit_ops
from hybridgl.models.timm_vit import vit_view

if TYPE_CHECKING:
    from open_clip.transformer import VisionTransformer


def blur_image(image: np.ndarray, kernel: int) -> np.ndarray:
    """OpenCV Gaussian blur with sigma derived from the kernel size, uint8 in and out."""
    return cv2.GaussianBlur(image, (kernel, kernel), 0)


def _pad_square(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Centre ``(B, C, H, W)`` in a square filled with the per-channel ``fill``."""
    b, c, h, w = x.shape
    side, top, left = square_padding(h, w)
    if side == h and side == w:
        return x
    out = fill.to(x.dtype).view(1, c, 1, 1).expand(b, c, side, side).clone()
    out[:, :, top : top + h, left : left + w] = x
    return out


def _pad_mask_square(m: torch.Tensor) -> torch.Tensor:
    b, h, w = m.shape
    side, top, left = square_padding(h, w)
    if side == h and side == w:
        return m
    out = torch.zeros((b, side, side), dtype=m.dtype, device=m.device)
    out[:, top : top + h, left : left + w] = m
    return out


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    # bilinear without antialias, as torchvision 0.15's tensor resize did
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )


def make_views(
    image: torch.Tensor,
    blurred: torch.Tensor,
    masks: torch.Tensor,
    cfg: MethodConfig,
    need_global: bool = True,
    patch: int = 16,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Global and local views and patch-grid masks for a chunk of proposals.

    Args:
        image: ``(3, H, W)`` uint8 image.
        blurred: ``(3, H, W)`` uint8 blurred image.
        masks: ``(n, H, W)`` bool proposals.
        cfg: method settings (view size, normalisation and aspect fixes).
        need_global: build the global view (the baselines use the local view only).
        patch: the ViT's patch size (16 for ViT-B/16, 14 for ViT-L/14).

    Returns:
        global ``(n, 3, S, S)`` or None, local ``(n, 3, S, S)``, and ``(n, G, G)`` float
        masks on the ``S / patch`` patch grid (14 x 14 for ViT-B/16 at 224 px; bilinear, no
        antialias).
    """
    s = cfg.view_size
    m = masks[:, None]  # (n, 1, H, W)
    g_mean, g_std = (
        (CLIP_MEAN, CLIP_STD) if cfg.clip_norm_both_views else (IMAGENET_MEAN, IMAGENET_STD)
    )
    dev = image.device
    g_mean_t = torch.tensor(g_mean, device=dev).view(1, 3, 1, 1)
    g_std_t = torch.tensor(g_std, device=dev).view(1, 3, 1, 1)
    clip_mean_t = torch.tensor(CLIP_MEAN, device=dev)

    global_view = None
    if need_global:
        # composite in uint8 (sharp inside, blurred outside), then to [0, 1]
        comp = torch.where(m, image[None], blurred[None]).float().div_(255.0)
        if cfg.keep_aspect:
            comp = _pad_square(comp, clip_mean_t)
        global_view = (_resize(comp, s) - g_mean_t) / g_std_t

    # local view: normalised image inside; outside the constant CLIP mean written into
    # the normalised tensor (reference quirk) or 0, the mean colour, with the fix
    norm = (image[None].float().div(255.0) - g_mean_t) / g_std_t
    fill = torch.zeros(3, device=dev) if cfg.clip_norm_both_views else clip_mean_t
    local = torch.where(m, norm, fill.view(1, 3, 1, 1))
    mf = masks.float()
    if cfg.keep_aspect:
        local = _pad_square(local, fill)
        mf = _pad_mask_square(mf)
    local_view = _resize(local, s)

    grid = s // patch
    m_grid = _resize(mf[:, None], grid)[:, 0]
    return global_view, local_view, m_grid


def cls_attention_mask(m_grid: torch.Tensor) -> torch.Tensor:
    """Attention mask A: ``(n, 1, L, L)`` bool, True where attention is allowed.

    Every token attends every token, except the class token (query 0), which attends only
    itself and the patches with ``m > 0``.
    """
    n = m_grid.shape[0]
    patches = m_grid.flatten(1) > 0
    length = patches.shape[1] + 1
    allowed = torch.ones((n, 1, length, length), dtype=torch.bool, device=m_grid.device)
    allowed[:, 0, 0, 1:] = patches
    return allowed


def _token_mask(x: torch.Tensor, m_grid: torch.Tensor) -> torch.Tensor:
    """Class token untouched, patch tokens multiplied by the grid mask."""
    scale = torch.cat([torch.ones_like(m_grid.flatten(1)[:, :1]), m_grid.flatten(1)], dim=1)
    return x * scale[:, :, None].to(x.dtype)


@torch.no_grad()
def hybrid_features(
    visual: VisionTransformer,
    global_view: torch.Tensor | None,
    local_view: torch.Tensor,
    m_grid: torch.Tensor,
    cfg: MethodConfig,
) -> torch.Tensor:
    """Hybrid global-local features of a chunk of proposals: ``(n, E)``.

    Implements the fusion modes G2L, L2G, G2L&L2G and the Global-Local CLIP baselines
    token_masking, attn_masking and crop of METHOD.md section 3.
    """
    visual = vit_view(visual)
    bl = vit_ops.blocks(visual)
    depth = len(bl)
    mb = cfg.masking_block
    w = cfg.fusion_weight
    mode = cfg.fusion
    n = local_view.shape[0]
    dtype = visual.conv1.weight.dtype

    if mode == "crop":
        x = vit_ops.embed(visual, local_view)
        for blk in bl:
            x = vit_ops.run_block(blk, x)
        return vit_ops.project_cls(visual, x)

    allowed = cls_attention_mask(m_grid)
    m_grid = m_grid.to(dtype)

    if mode in ("token_masking", "attn_masking"):
        x = vit_ops.embed(visual, local_view)
        for blk in bl[:mb]:
            x = vit_ops.run_block(blk, x)
        if mode == "token_masking":
            for blk in bl[mb:]:
                x = vit_ops.run_block(blk, _token_mask(x, m_grid))
        else:  # attention masking stops after block depth - 2 (reference quirk)
            for blk in bl[mb : depth - 1]:
                x = vit_ops.run_block(blk, x, allowed)
        return vit_ops.project_cls(visual, x)

    assert global_view is not None
    x = vit_ops.embed(visual, torch.cat([local_view, global_view], dim=0))
    for blk in bl[:mb]:
        x = vit_ops.run_block(blk, x)
    loc, glo = x[:n], x[n:]
    last = depth - 1

    if mode == "G2L":
        for i in range(mb, depth):
            new_loc = vit_ops.run_block(bl[i], loc + w * _token_mask(glo, m_grid))
            if i < last:  # the global stream after the last block is not used
                glo = vit_ops.run_block(bl[i], glo, allowed)
            loc = new_loc
        return vit_ops.project_cls(visual, loc)

    if mode == "L2G":
        for i in range(mb, depth):
            new_glo = vit_ops.run_block(bl[i], w * glo + loc, allowed)
            if i < last:
                loc = vit_ops.run_block(bl[i], loc)
            glo = new_glo
        return vit_ops.project_cls(visual, glo)

    # G2L&L2G: plain local/global streams feed a hybrid-local and a hybrid-global stream
    h_loc, h_glo = loc, glo
    for i in range(mb, depth):
        new_h_loc = vit_ops.run_block(bl[i], h_loc + w * _token_mask(glo, m_grid))
        new_h_glo = vit_ops.run_block(bl[i], loc + w * h_glo, allowed)
        if i < last:
            loc = vit_ops.run_block(bl[i], loc)
            glo = vit_ops.run_block(bl[i], glo, allowed)
        h_loc, h_glo = new_h_loc, new_h_glo
    return vit_ops.project_cls(visual, h_loc) + vit_ops.project_cls(visual, h_glo)


# Device memory one proposal needs in a ViT-B/16 pass: two 224 px views, their activations
# (197 tokens x 768 x a dozen live tensors) and attention maps (12 x 197 x 197), in float32,
# rounded up generously.
_CUDA_BYTES_PER_PROPOSAL = 32 * 2**20


def cuda_feature_batch(n: int, device: torch.device, fraction: float = 0.5) -> int:
    """How many of ``n`` proposals fit one ViT pass in ``fraction`` of the free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(n, int(free * fraction) // _CUDA_BYTES_PER_PROPOSAL))


@torch.no_grad()
def encode_proposals(
    visual: VisionTransformer,
    image: np.ndarray,
    masks: torch.Tensor,
    cfg: MethodConfig,
    device: torch.device,
) -> torch.Tensor:
    """Hybrid features of all proposals of one image, ``cfg.feature_batch`` at a time.

    On CUDA the masks go to the device once and as many proposals as memory allows go
    through the ViT in one pass (:func:`cuda_feature_batch`); nothing in the loop waits on
    the host.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(N, H, W)`` bool (any device).
    Returns:
        ``(N, E)`` float32 features on ``device``.
    """
    visual = vit_view(visual)
    n = masks.shape[0]
    step = cfg.feature_batch
    cuda = device.type == "cuda"  # asynchronous copies: the host never waits in here
    if cuda and n:
        masks = masks.to(device, non_blocking=True)
        step = max(step, cuda_feature_batch(n, device))
    img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    img_t = img_t.to(device, non_blocking=cuda)
    need_global = cfg.fusion in ("G2L", "L2G", "G2L&L2G")
    blurred_t = None
    if need_global:
        blurred = blur_image(image, cfg.blur_kernel)
        blurred_t = torch.from_numpy(blurred).permute(2, 0, 1).to(device, non_blocking=cuda)
    out = []
    for start in range(0, n, step):
        chunk = masks[start : start + step].to(device, non_blocking=cuda)
        g, loc, m_grid = make_views(
            img_t,
            blurred_t if blurred_t is not None else img_t,
            chunk,
            cfg,
            need_global=need_global,
            patch=int(visual.conv1.kernel_size[0]),
        )
        out.append(hybrid_features(visual, g, loc, m_grid, cfg).float())
    if not out:
        return torch.zeros((0, visual.output_dim), device=device)
    return torch.cat(out, dim=0)

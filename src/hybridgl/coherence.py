"""The coherence term of HybridGL's spatial guidance (METHOD.md section 6): the GEM heat
map at image resolution and each mask's coherence score against it.

Pure tensor functions like :mod:`hybridgl.guidance` (the rest of the guidance arithmetic),
with the same rules: CPU or any device, float32 or float64, results in the main input's
dtype and device, and a defined result where the reference divides by zero (stated in
each docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from hybridgl.guidance import EPS, wide_dtype

__all__ = ["min_max", "square_padding", "heat_map", "image_heat_map", "coherence_scores"]


def min_max(x: Tensor) -> Tensor:
    """Min-max normalisation ``(x - min) / (max - min)`` over all elements.

    Degenerate case: all zeros when ``max == min`` or the range is not finite (the map
    carries no information).

    Args:
        x: a tensor of any shape.

    Returns:
        A tensor of ``x``'s shape and dtype, in [0, 1].
    """
    lo, hi = x.min(), x.max()
    rng = hi - lo
    if not bool(torch.isfinite(rng)) or not bool(rng > 0):
        return torch.zeros_like(x)
    return (x - lo) / rng


def square_padding(height: int, width: int) -> tuple[int, int, int]:
    """The square that centres an ``height`` x ``width`` image (the ``keep_aspect`` fix).

    Args:
        height: H.
        width: W.

    Returns:
        ``(side, top, left)``: ``side = max(H, W)`` and the offsets of the image in the
        square, ``top = (side - H) // 2``, ``left = (side - W) // 2``.
    """
    side = max(height, width)
    return side, (side - height) // 2, (side - width) // 2


def heat_map(cos_map: Tensor, upsample_size: int, out_hw: tuple[int, int]) -> Tensor:
    """GEM heat map at image resolution (METHOD.md section 6).

    ``cos_map`` -> bilinear upsample to ``(upsample_size, upsample_size)``
    (``F.interpolate``, ``align_corners=False``) -> min-max normalise -> resize to
    ``out_hw`` (torchvision ``resize``, bilinear, ``antialias=True``) -> min-max normalise.
    Degenerate case: when max == min (or the range is not finite) at either normalisation
    the map carries no information and that step yields all zeros.

    Args:
        cos_map: (Gh, Gw) patch cosines, e.g. 28x28.
        upsample_size: side of the intermediate square, e.g. 448.
        out_hw: (H, W) of the image.

    Returns:
        (H, W) tensor in [0, 1] in the dtype of ``cos_map``.
    """
    if cos_map.ndim != 2:
        raise ValueError(f"expected cos_map (G, G), got {tuple(cos_map.shape)}")
    x = cos_map[None, None]
    if not x.is_floating_point():
        x = x.float()
    x = F.interpolate(x, size=(upsample_size, upsample_size), mode="bilinear", align_corners=False)
    x = min_max(x[0])  # (1, S, S)
    x = TF.resize(
        x,
        [int(out_hw[0]), int(out_hw[1])],
        interpolation=InterpolationMode.BILINEAR,
        antialias=True,
    )
    return min_max(x[0])


def image_heat_map(
    cos_map: Tensor, upsample_size: int, height: int, width: int, keep_aspect: bool = False
) -> Tensor:
    """The GEM heat map over the image's own pixels (METHOD.md section 6).

    Without ``keep_aspect`` GEM saw the image stretched to a square, so the map is
    :func:`heat_map` resized to ``(H, W)``. With ``keep_aspect`` GEM saw the image centred
    on a square (:func:`square_padding`): the map is made at the square's side, the
    image's part is cropped out and min-max normalised again (:func:`min_max`).

    Args:
        cos_map: (G, G) patch cosines.
        upsample_size: side of the intermediate square, e.g. 448.
        height: H of the image the masks live on.
        width: W.
        keep_aspect: whether GEM's input was square-padded.

    Returns:
        (H, W) tensor in [0, 1] in the dtype of ``cos_map``.
    """
    if not keep_aspect:
        return heat_map(cos_map, upsample_size, (height, width))
    side, top, left = square_padding(height, width)
    square = heat_map(cos_map, upsample_size, (side, side))
    return min_max(square[top : top + height, left : left + width])


def coherence_scores(
    heat: Tensor, prior: Tensor, masks: Tensor, beta: float, chunk: int = 16
) -> Tensor:
    """Position/coherence guidance ``g`` of each mask (METHOD.md section 6).

    ``A = heat * prior``; ``A = A / mean(A)`` (all zeros when the mean is 0 or not finite).
    For each mask ``M``: ``g = (2 - beta) * mean(A over M) - beta * mean(A outside M)``.
    Degenerate cases: an empty mask has inside mean 0; a mask covering the whole image has
    outside mean 0 (the reference divides by zero). Non-bool masks are used as weights, as
    in the reference formula ``sum(A * M) / sum(M)``.

    Masks are processed ``chunk`` at a time (one matrix-vector product each), so memory
    stays bounded for many large masks; sums accumulate in float64 (float32 on MPS).

    Args:
        heat: (H, W) heat map.
        prior: (H, W) direction prior.
        masks: (N, H, W) bool masks.
        beta: the coherence weight ``b``.
        chunk: masks per matrix-vector product (>= 1).

    Returns:
        (N,) scores in the dtype of ``heat``.
    """
    if heat.shape != prior.shape or masks.ndim != 3 or masks.shape[1:] != heat.shape:
        raise ValueError(
            f"expected heat (H, W), prior (H, W), masks (N, H, W), got {tuple(heat.shape)}, "
            f"{tuple(prior.shape)}, {tuple(masks.shape)}"
        )
    out_dtype = heat.dtype if heat.is_floating_point() else torch.float32
    acc = wide_dtype(heat.device)
    a = (heat.to(acc) * prior.to(device=heat.device, dtype=acc)).flatten()
    m = a.mean() if a.numel() else a.new_tensor(0.0)
    if not bool(torch.isfinite(m)) or bool(m == 0):
        a = torch.zeros_like(a)
    else:
        a = a / m
    total_sum = a.sum()
    total_count = float(a.numel())

    n = int(masks.shape[0])
    out = torch.empty(n, dtype=acc, device=heat.device)
    step = max(1, int(chunk))
    for start in range(0, n, step):
        mk = masks[start : start + step].to(device=heat.device, dtype=acc).flatten(1)
        in_sum = mk @ a
        in_cnt = mk.sum(dim=1)
        out_sum = total_sum - in_sum
        out_cnt = total_count - in_cnt
        in_mean = torch.where(in_cnt > 0, in_sum / in_cnt.clamp_min(EPS), torch.zeros_like(in_sum))
        out_mean = torch.where(
            out_cnt > 0, out_sum / out_cnt.clamp_min(EPS), torch.zeros_like(out_sum)
        )
        out[start : start + step] = (2 - beta) * in_mean - beta * out_mean
    return out.to(out_dtype)

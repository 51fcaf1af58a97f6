"""Spatial guidance arithmetic of HybridGL (METHOD.md sections 4 to 7; the GEM heat map and
the coherence term of section 6 are in :mod:`hybridgl.coherence`).

Pure tensor functions, no model inside: the segmenter feeds them CLIP features, proposal
boxes and masks, and a GEM cosine map, and combines the results. Every function works on
CPU or any device and in float32 or float64; results keep the dtype and device of the main
input.

The reference implementation divides by zero in a few degenerate cases (a zero-area box,
an empty mask, a mask covering the whole image, a constant heat map). Each such case has a
defined result here, stated in the docstring of the function concerned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridgl.types import DIRECTIONS, RELATIONS

__all__ = [
    "RELATIONS",
    "DIRECTIONS",
    "clip_logits",
    "softmax",
    "top_k_indices",
    "relation_sums",
    "relation_guidance",
    "direction_prior",
    "beta_for",
    "final_scores",
]

# The one vocabulary (hybridgl.types): relation names understood by :func:`relation_sums`
# (anything else acts as "none") and direction names understood by :func:`direction_prior`
# (anything else gives ones).

#: The guard of the divisions in the guidance arithmetic (also :mod:`hybridgl.coherence`).
EPS = 1e-12


def wide_dtype(device: torch.device) -> torch.dtype:
    """Accumulation dtype: float64 wherever the backend supports it."""
    return torch.float32 if device.type == "mps" else torch.float64


def clip_logits(features: Tensor, text: Tensor, logit_scale: float) -> Tensor:
    """Scaled cosine similarity of each feature with one text embedding.

    Both sides are L2-normalised as ``x / max(||x||, 1e-12)`` (as ``F.normalize``), so an
    all-zero vector gives zero logits instead of NaN. The caller decides what a zero text
    embedding (no context noun) means; this function only computes.

    Args:
        features: (N, D) image features, one per proposal.
        text: (D,) text embedding.
        logit_scale: L, the multiplier (``exp(logit_scale)`` of the CLIP model, e.g. 100).

    Returns:
        (N,) tensor ``L * cos(features[i], text)`` in the dtype of ``features``.
    """
    if features.ndim != 2 or text.ndim != 1 or features.shape[1] != text.shape[0]:
        raise ValueError(
            f"expected features (N, D) and text (D,), got {tuple(features.shape)} "
            f"and {tuple(text.shape)}"
        )
    text = text.to(device=features.device, dtype=features.dtype)
    v = F.normalize(features, dim=-1, eps=EPS)
    t = F.normalize(text, dim=-1, eps=EPS)
    return logit_scale * (v @ t)


def softmax(x: Tensor) -> Tensor:
    """Softmax over a 1-D tensor.

    Args:
        x: (N,) scores.

    Returns:
        (N,) probabilities summing to 1 (empty in, empty out).
    """
    return torch.softmax(x, dim=0)


def top_k_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest scores, in ``torch.topk`` order (descending).

    Args:
        scores: (N,) scores.
        k: how many to keep; clipped to ``[0, N]``.

    Returns:
        (min(k, N),) int64 indices; ties are ordered as ``torch.topk`` orders them.
    """
    k_eff = max(0, min(int(k), int(scores.shape[0])))
    return torch.topk(scores, k_eff).indices


def _box_geometry(boxes: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Centres and areas of XYWH boxes: (cx, cy, area), each (N,)."""
    b = boxes.to(dtype)
    x, y, w, h = b.unbind(dim=1)
    return x + w / 2, y + h / 2, w * h


def relation_sums(
    p: Tensor,
    q: Tensor | None,
    boxes: Tensor,
    relation: str | None,
    k1: int,
    k2: int,
) -> tuple[Tensor, Tensor]:
    """Summed relation terms of the top-``k1`` proposals (METHOD.md section 5).

    ``T`` = top ``k1`` indices of ``p``. Without context (``q is None``) ``C = T`` and
    ``s = p``; otherwise ``C`` = top ``k2`` indices of ``q`` and ``s = q``. Both ``k`` are
    clipped to N. For each ``i`` in ``T`` (in topk order) the result is the sum over ALL
    ``j`` in ``C`` (``j == i`` included) of:

    - ``none`` (also ``None`` or any unknown name): ``p_i`` (so ``|C| * p_i``);
    - ``left``: ``p_i * s_j * [cx_i < cx_j]``; ``right``: ``[cx_i > cx_j]``;
      ``up``: ``[cy_i < cy_j]``; ``down``: ``[cy_i > cy_j]``;
      ``big``: ``[area_i > area_j]``; ``small``: ``[area_i < area_j]``;
    - ``within``: ``p_i * s_j * inter(i, j) / area_i`` with ``x1 = max(x_i, x_j)``,
      ``x2 = max(x1, min(x_i + w_i, x_j + w_j))`` (same for y) and
      ``inter = (x2 - x1) * (y2 - y1)``. Degenerate case: when ``area_i == 0`` the term is
      defined as 0 (the reference divides by zero).

    Centres ``cx = x + w / 2``, ``cy = y + h / 2`` and areas ``w * h`` come from the XYWH
    boxes; geometry is computed in float64 (float32 on MPS), the products in ``p``'s dtype.

    Args:
        p: (N,) softmax of the expression logits.
        q: (N,) softmax of the context logits, or None when there is no context noun.
        boxes: (N, 4) XYWH boxes in pixels.
        relation: relation name, see :data:`RELATIONS`.
        k1: size of the candidate set ``T``.
        k2: size of the context set ``C`` (ignored when ``q`` is None).

    Returns:
        ``(T, sums)``: (k1',) int64 indices into the proposals and (k1',) sums in ``p``'s
        dtype, with ``k1' = min(k1, N)``.
    """
    n = int(p.shape[0])
    if p.ndim != 1 or boxes.shape != (n, 4):
        raise ValueError(
            f"expected p (N,) and boxes (N, 4), got {tuple(p.shape)} and {tuple(boxes.shape)}"
        )
    if q is not None and q.shape != p.shape:
        raise ValueError(f"q must have the shape of p {tuple(p.shape)}, got {tuple(q.shape)}")

    t_idx = top_k_indices(p, k1)
    if q is None:
        c_idx, s = t_idx, p
    else:
        q = q.to(device=p.device, dtype=p.dtype)
        c_idx, s = top_k_indices(q, k2), q

    p_t = p[t_idx][:, None]  # (k1', 1)
    s_c = s[c_idx][None, :]  # (1, k2')
    rel = relation if relation in RELATIONS else "none"

    if rel == "none":
        terms = p_t.expand(-1, c_idx.shape[0])
        return t_idx, terms.sum(dim=1)

    geo_dtype = wide_dtype(p.device)
    boxes = boxes.to(p.device)
    if rel == "within":
        b = boxes.to(geo_dtype)
        bi, bj = b[t_idx][:, None, :], b[c_idx][None, :, :]
        x1 = torch.maximum(bi[..., 0], bj[..., 0])
        x2 = torch.maximum(x1, torch.minimum(bi[..., 0] + bi[..., 2], bj[..., 0] + bj[..., 2]))
        y1 = torch.maximum(bi[..., 1], bj[..., 1])
        y2 = torch.maximum(y1, torch.minimum(bi[..., 1] + bi[..., 3], bj[..., 1] + bj[..., 3]))
        inter = ((x2 - x1) * (y2 - y1)).to(p.dtype)  # (k1', k2')
        area_i = (bi[..., 2] * bi[..., 3]).to(p.dtype)  # (k1', 1)
        positive = area_i > 0
        safe_area = torch.where(positive, area_i, torch.ones_like(area_i))
        terms = p_t * s_c * inter / safe_area
        terms = torch.where(positive, terms, torch.zeros_like(terms))
        return t_idx, terms.sum(dim=1)

    cx, cy, area = _box_geometry(boxes, geo_dtype)
    key, sign = {
        "left": (cx, -1),
        "right": (cx, 1),
        "up": (cy, -1),
        "down": (cy, 1),
        "big": (area, 1),
        "small": (area, -1),
    }[rel]
    ki, kj = key[t_idx][:, None], key[c_idx][None, :]
    indicator = (ki > kj) if sign > 0 else (ki < kj)
    terms = p_t * s_c * indicator.to(p.dtype)
    return t_idx, terms.sum(dim=1)


def relation_guidance(
    p: Tensor,
    q: Tensor | None,
    boxes: Tensor,
    relation: str | None,
    k1: int,
    k2: int,
) -> tuple[Tensor, Tensor]:
    """Relation guidance ``r`` of the top-``k1`` proposals: softmax of :func:`relation_sums`.

    Args:
        p: (N,) softmax of the expression logits.
        q: (N,) softmax of the context logits, or None when there is no context noun.
        boxes: (N, 4) XYWH boxes in pixels.
        relation: relation name, see :data:`RELATIONS`.
        k1: size of the candidate set ``T``.
        k2: size of the context set ``C``.

    Returns:
        ``(T, r)``: (k1',) int64 indices and (k1',) probabilities (empty when N == 0).
    """
    t_idx, sums = relation_sums(p, q, boxes, relation, k1, k2)
    return t_idx, softmax(sums)


def direction_prior(
    direction: str | None,
    height: int,
    width: int,
    vertical: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Spatial prior ``P`` for a direction word (METHOD.md section 6).

    - ``left``: ``linspace(1, 0, W)`` along each row; ``right``: ``linspace(0, 1, W)``;
    - ``middle``: ``cat(linspace(0, 1, W // 2), linspace(1, 0, W - W // 2))`` along rows;
    - with ``vertical=True`` only: ``up`` = ``linspace(1, 0, H)`` down each column,
      ``down`` = ``linspace(0, 1, H)``. With ``vertical=False`` (the reference, which
      disabled vertical priors) they give ones;
    - anything else (including None): ones.

    Args:
        direction: direction name, see :data:`DIRECTIONS`.
        height: H.
        width: W.
        vertical: enable the up/down priors (a fix of a reference quirk).
        device: device of the result.
        dtype: dtype of the result.

    Returns:
        (H, W) contiguous tensor.
    """
    if direction == "left":
        row = torch.linspace(1, 0, width, device=device, dtype=dtype)
    elif direction == "right":
        row = torch.linspace(0, 1, width, device=device, dtype=dtype)
    elif direction == "middle":
        half = width // 2
        row = torch.cat(
            [
                torch.linspace(0, 1, half, device=device, dtype=dtype),
                torch.linspace(1, 0, width - half, device=device, dtype=dtype),
            ]
        )
    elif vertical and direction in ("up", "down"):
        start, end = (1, 0) if direction == "up" else (0, 1)
        col = torch.linspace(start, end, height, device=device, dtype=dtype)
        return col[:, None].expand(height, width).contiguous()
    else:
        return torch.ones(height, width, device=device, dtype=dtype)
    return row[None, :].expand(height, width).contiguous()


def beta_for(
    relation: str | None, big: float = 1.95, small: float = 1.5, default: float = 1.8
) -> float:
    """Coherence weight ``b``: ``big`` for the big relation, ``small`` for small, else default.

    Args:
        relation: relation name.
        big: value for ``"big"``.
        small: value for ``"small"``.
        default: value for every other relation.

    Returns:
        The weight.
    """
    if relation == "big":
        return big
    if relation == "small":
        return small
    return default


def final_scores(r: Tensor, g_T: Tensor, alpha: float) -> Tensor:
    """Final score of the top-``k1`` candidates: ``(1 - alpha) * r + alpha * g_T``.

    Args:
        r: (k,) relation guidance of the candidates.
        g_T: (k,) coherence guidance of the same candidates, same order.
        alpha: weight of the coherence guidance (0.6 in the paper).

    Returns:
        (k,) scores; the answer is their argmax.
    """
    if r.shape != g_T.shape:
        raise ValueError(f"r and g_T differ in shape: {tuple(r.shape)} vs {tuple(g_T.shape)}")
    return (1 - alpha) * r + alpha * g_T.to(device=r.device, dtype=r.dtype)


def phrase_embedding(
    sentence: torch.Tensor, noun_phrase: torch.Tensor, weight: float
) -> torch.Tensor:
    """The phrase's text feature ``w E(s) + (1 - w) E(np)`` (METHOD.md section 4): the one
    place of the formula (the segmenter's scoring and the collection search use it)."""
    return weight * sentence + (1 - weight) * noun_phrase

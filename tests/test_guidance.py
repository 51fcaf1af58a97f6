"""Known-answer tests of the spatial guidance arithmetic (METHOD.md sections 4 to 7).

Every expected number is worked by hand in the comments next to it.
"""

from __future__ import annotations

import math

import pytest
import torch

from hybridgl.coherence import coherence_scores, heat_map
from hybridgl.guidance import (
    beta_for,
    clip_logits,
    direction_prior,
    final_scores,
    relation_guidance,
    relation_sums,
    softmax,
    top_k_indices,
)

ATOL = 1e-6


def close(actual: torch.Tensor, expected: list[float] | list[list[float]], atol=ATOL) -> None:
    exp = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == exp.shape, (actual.shape, exp.shape)
    torch.testing.assert_close(actual.double(), exp, atol=atol, rtol=0)


# ---------------------------------------------------------------- clip_logits / softmax / topk


def test_clip_logits_known_answer():
    # text [2, 0] normalises to [1, 0]; features normalise to [1,0], [0,1], [0.6,0.8], [0,0]
    # cos = [1, 0, 0.6, 0] (the zero feature is eps-safe: 0, not NaN); times L = 100.
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    out = clip_logits(feats, torch.tensor([2.0, 0.0]), 100.0)
    close(out, [100.0, 0.0, 60.0, 0.0], atol=1e-4)
    assert out.dtype == torch.float32


def test_clip_logits_zero_text_is_zero_not_nan():
    out = clip_logits(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2), 100.0)
    close(out, [0.0, 0.0])


def test_clip_logits_shape_mismatch():
    with pytest.raises(ValueError):
        clip_logits(torch.ones(3, 4), torch.ones(5), 1.0)


def test_softmax_known_answer():
    # exp(0) = 1, exp(ln 3) = 3 -> [1/4, 3/4]
    close(softmax(torch.tensor([0.0, math.log(3.0)])), [0.25, 0.75])
    assert softmax(torch.zeros(0)).shape == (0,)


def test_top_k_indices():
    s = torch.tensor([0.1, 0.5, 0.3])
    assert top_k_indices(s, 2).tolist() == [1, 2]
    assert top_k_indices(s, 5).tolist() == [1, 2, 0]  # clipped to N = 3
    assert top_k_indices(s, 0).tolist() == []
    assert top_k_indices(torch.zeros(0), 3).tolist() == []


# ---------------------------------------------------------------- relation_sums

# Boxes (XYWH):      b0 = [0,0,2,2]   b1 = [4,0,2,4]   b2 = [1,3,1,1]
# centres cx:              1               5               1.5
#         cy:              1               2               3.5
# areas:                   4               8               1
BOXES = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 2.0, 4.0], [1.0, 3.0, 1.0, 1.0]])
P = torch.tensor([0.5, 0.3, 0.2])
Q = torch.tensor([0.1, 0.2, 0.7])

# No context (q = None): T = C = [0, 1, 2], s = p.
NO_Q_EXPECTED = {
    # i=0: j with cx_j > 1 are 1, 2 -> 0.5 * (0.3 + 0.2) = 0.25
    # i=1: none -> 0;  i=2 (1.5): j=1 -> 0.2 * 0.3 = 0.06
    "left": [0.25, 0.0, 0.06],
    # i=0: none;  i=1: j=0, 2 -> 0.3 * 0.7 = 0.21;  i=2: j=0 -> 0.2 * 0.5 = 0.1
    "right": [0.0, 0.21, 0.1],
    # cy = [1, 2, 3.5]. i=0: j=1, 2 -> 0.5 * 0.5 = 0.25;  i=1: j=2 -> 0.3 * 0.2 = 0.06;  i=2: 0
    "up": [0.25, 0.06, 0.0],
    # i=0: 0;  i=1: j=0 -> 0.3 * 0.5 = 0.15;  i=2: j=0, 1 -> 0.2 * 0.8 = 0.16
    "down": [0.0, 0.15, 0.16],
    # area = [4, 8, 1]. i=0: j=2 -> 0.5 * 0.2 = 0.1;  i=1: j=0, 2 -> 0.3 * 0.7 = 0.21;  i=2: 0
    "big": [0.1, 0.21, 0.0],
    # i=0: j=1 -> 0.5 * 0.3 = 0.15;  i=1: 0;  i=2: j=0, 1 -> 0.2 * 0.8 = 0.16
    "small": [0.15, 0.0, 0.16],
    # |C| * p_i = 3 * [0.5, 0.3, 0.2]
    "none": [1.5, 0.9, 0.6],
    "unknown-word": [1.5, 0.9, 0.6],
    # The boxes overlap only with themselves (inter/area = 1): p_i * p_i = [0.25, 0.09, 0.04].
    # e.g. i=2, j=0: x1 = max(1,0) = 1, x2 = max(1, min(2, 2)) = 2 -> 1;
    #               y1 = max(3,0) = 3, y2 = max(3, min(4, 2)) = 3 -> 0; inter = 0.
    "within": [0.25, 0.09, 0.04],
}


@pytest.mark.parametrize("relation", sorted(NO_Q_EXPECTED))
def test_relation_sums_without_context(relation):
    t, sums = relation_sums(P, None, BOXES, relation, 3, 6)
    assert t.tolist() == [0, 1, 2]
    close(sums, NO_Q_EXPECTED[relation])


def test_relation_sums_none_relation_is_python_none():
    _, sums = relation_sums(P, None, BOXES, None, 3, 6)
    close(sums, [1.5, 0.9, 0.6])


# With context: k1 = 2 -> T = [0, 1]; k2 = 2 -> C = top2(q) = [2, 1], s = q (s_2 = 0.7,
# s_1 = 0.2).
WITH_Q_EXPECTED = {
    # i=0 (cx 1): j=2 (1.5) yes 0.5*0.7 = 0.35, j=1 (5) yes 0.5*0.2 = 0.1 -> 0.45;  i=1: 0
    "left": [0.45, 0.0],
    # i=0: 0;  i=1 (cx 5): j=2 yes 0.3*0.7 = 0.21, j=1 (5 > 5) no -> 0.21
    "right": [0.0, 0.21],
    # i=0 (cy 1): j=2 (3.5) and j=1 (2) -> 0.35 + 0.1 = 0.45;  i=1 (cy 2): j=2 -> 0.21
    "up": [0.45, 0.21],
    # nobody is below any candidate of C: 0, 0
    "down": [0.0, 0.0],
    # i=0 (area 4): j=2 (1) -> 0.35;  i=1 (area 8): j=2 -> 0.21
    "big": [0.35, 0.21],
    # i=0 (area 4): j=1 (8) -> 0.5*0.2 = 0.1;  i=1: 0
    "small": [0.1, 0.0],
    # |C| * p_i = 2 * [0.5, 0.3]
    "none": [1.0, 0.6],
    # i=0: no overlap with b2 or b1 -> 0;  i=1: j=1 itself 1 * 0.3*0.2 = 0.06, j=2 -> 0
    "within": [0.0, 0.06],
}


@pytest.mark.parametrize("relation", sorted(WITH_Q_EXPECTED))
def test_relation_sums_with_context(relation):
    t, sums = relation_sums(P, Q, BOXES, relation, 2, 2)
    assert t.tolist() == [0, 1]
    close(sums, WITH_Q_EXPECTED[relation])


def test_relation_sums_within_overlapping_boxes():
    # a = [0,0,4,4] (area 16), b = [2,2,4,4] (area 16), c = [1,1,2,2] (area 4); p = [.5,.3,.2].
    # inter(a,b): x1 = 2, x2 = max(2, min(4, 6)) = 4 -> 2, same for y -> 4
    # inter(a,c): x1 = 1, x2 = max(1, min(4, 3)) = 3 -> 2, same for y -> 4
    # inter(b,c): x1 = 2, x2 = max(2, min(6, 3)) = 3 -> 1, same for y -> 1
    # i=a: .5*.5*16/16 + .5*.3*4/16 + .5*.2*4/16 = .25 + .0375 + .025 = .3125
    # i=b: .3*.5*4/16 + .3*.3*16/16 + .3*.2*1/16 = .0375 + .09 + .00375 = .13125
    # i=c: .2*.5*4/4 + .2*.3*1/4 + .2*.2*4/4 = .1 + .015 + .04 = .155
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 4, 4], [1, 1, 2, 2]])
    t, sums = relation_sums(P, None, boxes, "within", 3, 3)
    assert t.tolist() == [0, 1, 2]
    close(sums, [0.3125, 0.13125, 0.155])


def test_relation_sums_within_zero_area_is_zero():
    # box 1 has width 0 (area 0): its own term is defined as 0 instead of 0/0.
    # i=0 ([0,0,2,2]): j=0 -> .6*.6 = .36; j=1 ([1,0,0,2]): x1 = 1, x2 = max(1, min(2,1)) = 1
    #   -> inter 0 -> 0.  i=1: all terms 0 (area_i = 0).
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 0.0, 2.0]])
    p = torch.tensor([0.6, 0.4])
    t, sums = relation_sums(p, None, boxes, "within", 3, 6)
    assert t.tolist() == [0, 1]
    close(sums, [0.36, 0.0])
    assert torch.isfinite(sums).all()


def test_relation_sums_k_clipped_to_n():
    # N = 2 < k1 = 3, k2 = 6. p = [.4, .6] -> T = [1, 0]; q = [.7, .3] -> C = [0, 1].
    # boxes cx = [1, 5]. left: i=1 (cx 5): 0; i=0 (cx 1): j=1 -> .4 * .3 = .12 -> [0, .12]
    # none: |C| = 2 -> [2 * .6, 2 * .4] = [1.2, .8]
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 2.0, 2.0]])
    p, q = torch.tensor([0.4, 0.6]), torch.tensor([0.7, 0.3])
    t, sums = relation_sums(p, q, boxes, "left", 3, 6)
    assert t.tolist() == [1, 0]
    close(sums, [0.0, 0.12])
    t, sums = relation_sums(p, q, boxes, "none", 3, 6)
    close(sums, [1.2, 0.8])


def test_relation_sums_empty():
    t, sums = relation_sums(torch.zeros(0), None, torch.zeros(0, 4), "left", 3, 6)
    assert t.shape == (0,) and sums.shape == (0,)
    t, r = relation_guidance(torch.zeros(0), torch.zeros(0), torch.zeros(0, 4), "none", 3, 6)
    assert t.shape == (0,) and r.shape == (0,)


def test_relation_sums_float64_and_int_boxes():
    t, sums = relation_sums(
        torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), None, BOXES.long(), "left", 3, 6
    )
    assert sums.dtype == torch.float64
    close(sums, NO_Q_EXPECTED["left"], atol=1e-12)


def _loop_reference(p, q, boxes, relation, k1, k2):
    """Straightforward double loop, written from METHOD.md section 5."""
    n = len(p)
    t = torch.topk(p, min(k1, n)).indices.tolist()
    if q is None:
        c, s = t, p
    else:
        c, s = torch.topk(q, min(k2, n)).indices.tolist(), q
    out = []
    for i in t:
        xi, yi, wi, hi = (float(v) for v in boxes[i])
        total = 0.0
        for j in c:
            xj, yj, wj, hj = (float(v) for v in boxes[j])
            pi, sj = float(p[i]), float(s[j])
            cxi, cyi, cxj, cyj = xi + wi / 2, yi + hi / 2, xj + wj / 2, yj + hj / 2
            ai, aj = wi * hi, wj * hj
            if relation == "left":
                total += pi * sj * (cxi < cxj)
            elif relation == "right":
                total += pi * sj * (cxi > cxj)
            elif relation == "up":
                total += pi * sj * (cyi < cyj)
            elif relation == "down":
                total += pi * sj * (cyi > cyj)
            elif relation == "big":
                total += pi * sj * (ai > aj)
            elif relation == "small":
                total += pi * sj * (ai < aj)
            elif relation == "within":
                x1 = max(xi, xj)
                x2 = max(x1, min(xi + wi, xj + wj))
                y1 = max(yi, yj)
                y2 = max(y1, min(yi + hi, yj + hj))
                inter = (x2 - x1) * (y2 - y1)
                total += pi * sj * inter / ai if ai != 0 else 0.0
            else:
                total += pi
        out.append(total)
    return t, out


@pytest.mark.parametrize(
    "relation", ["none", "left", "right", "up", "down", "big", "small", "within", "other"]
)
@pytest.mark.parametrize("with_q", [False, True])
@pytest.mark.parametrize("n", [1, 4, 9])
def test_relation_sums_matches_loop(relation, with_q, n):
    gen = torch.Generator().manual_seed(1000 * n + 7 * with_q + len(relation))
    for _ in range(5):
        p = softmax(torch.randn(n, generator=gen, dtype=torch.float64) * 3)
        q = softmax(torch.randn(n, generator=gen, dtype=torch.float64) * 3) if with_q else None
        # integer pixel boxes on a small canvas so that ties and zero sizes happen
        xy = torch.randint(0, 6, (n, 2), generator=gen)
        wh = torch.randint(0, 5, (n, 2), generator=gen)
        boxes = torch.cat([xy, wh], dim=1).double()
        t, sums = relation_sums(p, q, boxes, relation, 3, 6)
        t_ref, sums_ref = _loop_reference(p, q, boxes, relation, 3, 6)
        assert t.tolist() == t_ref
        torch.testing.assert_close(sums, torch.tensor(sums_ref, dtype=torch.float64))


def test_relation_guidance_known_answer():
    # none without q: sums = [1.5, 0.9, 0.6]; e^1.5 = 4.4816891, e^0.9 = 2.4596031,
    # e^0.6 = 1.8221188, total 8.7634110 -> r = [0.5114092, 0.2806673, 0.2079235]
    t, r = relation_guidance(P, None, BOXES, "none", 3, 6)
    assert t.tolist() == [0, 1, 2]
    close(r, [0.5114092, 0.2806673, 0.2079235], atol=1e-6)
    # left with q, k1 = k2 = 2: sums [0.45, 0] -> r = [e^.45, 1] / (e^.45 + 1)
    # e^.45 = 1.5683122 -> r = [0.6106392, 0.3893608]
    t, r = relation_guidance(P, Q, BOXES, "left", 2, 2)
    assert t.tolist() == [0, 1]
    close(r, [0.6106392, 0.3893608], atol=1e-6)


# ---------------------------------------------------------------- direction_prior


def test_direction_prior_horizontal_w5():
    # linspace(1, 0, 5) = [1, .75, .5, .25, 0]; linspace(0, 1, 5) reversed
    # middle: W // 2 = 2 -> linspace(0, 1, 2) = [0, 1]; linspace(1, 0, 3) = [1, .5, 0]
    left = direction_prior("left", 2, 5)
    assert left.shape == (2, 5) and left.dtype == torch.float32
    close(left, [[1, 0.75, 0.5, 0.25, 0]] * 2)
    close(direction_prior("right", 2, 5), [[0, 0.25, 0.5, 0.75, 1]] * 2)
    close(direction_prior("middle", 2, 5), [[0, 1, 1, 0.5, 0]] * 2)


def test_direction_prior_middle_even_and_tiny():
    # W = 4: [0, 1] + [1, 0];  W = 1: [] + linspace(1, 0, 1) = [1]
    close(direction_prior("middle", 1, 4), [[0, 1, 1, 0]])
    close(direction_prior("middle", 2, 1), [[1], [1]])


def test_direction_prior_vertical():
    # vertical off (reference): up/down are ones; on: linspace down the rows.
    close(direction_prior("up", 3, 2), [[1, 1]] * 3)
    close(direction_prior("down", 3, 2), [[1, 1]] * 3)
    close(direction_prior("up", 3, 2, vertical=True), [[1, 1], [0.5, 0.5], [0, 0]])
    close(direction_prior("down", 3, 2, vertical=True), [[0, 0], [0.5, 0.5], [1, 1]])


def test_direction_prior_other_and_dtype():
    close(direction_prior("none", 2, 3), [[1, 1, 1]] * 2)
    close(direction_prior(None, 1, 2), [[1, 1]])
    out = direction_prior("left", 2, 3, dtype=torch.float64, device="cpu")
    assert out.dtype == torch.float64 and out.is_contiguous()


# ---------------------------------------------------------------- heat_map


def test_heat_map_known_answer():
    # 2x2 [[0, 1], [0, 1]] -> bilinear 4x4 (align_corners=False): source x = (x + .5) / 2 - .5
    # = -.25 (clamped to 0), .25, .75, 1.25 (clamped to 1) -> columns [0, .25, .75, 1];
    # min-max keeps it. Resize to (2, 4): every row is equal, so the antialiased row
    # averaging keeps [0, .25, .75, 1] and the unchanged width is the identity.
    cos = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = heat_map(cos, 4, (2, 4))
    close(out, [[0, 0.25, 0.75, 1]] * 2, atol=1e-5)
    # the same without a size change
    close(heat_map(cos, 4, (4, 4)), [[0, 0.25, 0.75, 1]] * 4, atol=1e-5)


def test_heat_map_normalises_scale_and_offset():
    # min-max normalisation makes the result invariant to a * cos + b (a > 0).
    cos = torch.tensor([[0.0, 1.0], [0.0, 1.0]]) * 0.02 + 0.3
    close(heat_map(cos, 4, (4, 4)), [[0, 0.25, 0.75, 1]] * 4, atol=1e-4)


def test_heat_map_constant_is_zero():
    out = heat_map(torch.full((3, 3), 0.7), 6, (5, 7))
    assert out.shape == (5, 7)
    assert torch.equal(out, torch.zeros(5, 7))


def test_heat_map_range_and_shape():
    gen = torch.Generator().manual_seed(0)
    out = heat_map(torch.randn(28, 28, generator=gen), 448, (37, 53))
    assert out.shape == (37, 53)
    assert float(out.min()) == pytest.approx(0.0, abs=1e-7)
    assert float(out.max()) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- coherence_scores


def _mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in r] for r in rows])


HEAT_4x4 = torch.tensor(
    [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
)
M_TOPLEFT = _mask(["##..", "##..", "....", "...."])
M_TOPRIGHT = _mask(["..##", "..##", "....", "...."])
M_TOPROW = _mask(["####", "....", "....", "...."])
M_ALL = torch.ones(4, 4, dtype=torch.bool)
M_NONE = torch.zeros(4, 4, dtype=torch.bool)


def test_coherence_known_answer():
    # prior = ones; mean(heat) = 4/16 = .25 -> A = 4 on the top-left 2x2, 0 elsewhere
    # (sum 16). b = 1.8, so 2 - b = 0.2.
    # top-left:  in 4, out 0               -> .2*4 - 0           = 0.8
    # top-right: in 0, out 16/12 = 4/3     -> 0 - 1.8*4/3        = -2.4
    # top row:   in (4+4+0+0)/4 = 2, out 8/12 = 2/3 -> .4 - 1.2  = -0.8
    # whole image: in mean(A) = 1, out defined 0 -> 0.2
    # empty: in defined 0, out 1          -> -1.8
    masks = torch.stack([M_TOPLEFT, M_TOPRIGHT, M_TOPROW, M_ALL, M_NONE])
    g = coherence_scores(HEAT_4x4, torch.ones(4, 4), masks, 1.8)
    assert g.dtype == torch.float32
    close(g, [0.8, -2.4, -0.8, 0.2, -1.8], atol=1e-5)


def test_coherence_with_left_prior():
    # heat ones, prior left W=4: columns [1, 2/3, 1/3, 0], mean .5 -> A columns [2, 4/3, 2/3, 0]
    # b = 1.5 (2 - b = .5).
    # column 0: in 2, out (4/3 + 2/3 + 0)/3 = 2/3 -> .5*2 - 1.5*2/3 = 0
    # column 1: in 4/3, out (2 + 2/3 + 0)/3 = 8/9 -> .5*4/3 - 1.5*8/9 = 2/3 - 4/3 = -2/3
    prior = direction_prior("left", 4, 4)
    c0 = _mask(["#...", "#...", "#...", "#..."])
    c1 = _mask([".#..", ".#..", ".#..", ".#.."])
    g = coherence_scores(torch.ones(4, 4), prior, torch.stack([c0, c1]), 1.5)
    close(g, [0.0, -2.0 / 3.0], atol=1e-6)


def test_coherence_zero_heat_gives_zeros():
    # mean(A) = 0 -> A defined as zeros -> every score 0 (no NaN).
    masks = torch.stack([M_TOPLEFT, M_ALL, M_NONE])
    g = coherence_scores(torch.zeros(4, 4), torch.ones(4, 4), masks, 1.8)
    assert torch.equal(g, torch.zeros(3))


def test_coherence_no_masks_and_bad_shapes():
    assert coherence_scores(HEAT_4x4, torch.ones(4, 4), M_ALL[None][:0], 1.8).shape == (0,)
    with pytest.raises(ValueError):
        coherence_scores(HEAT_4x4, torch.ones(4, 4), torch.ones(2, 3, 4, dtype=torch.bool), 1.8)


def _coherence_reference(heat, prior, masks, beta):
    a = heat.double() * prior.double()
    a = a / a.mean()
    out = []
    for m in masks.double():
        out.append(
            float((a * (2 - beta) * m / m.sum()).sum() - (a * beta * (1 - m) / (1 - m).sum()).sum())
        )
    return torch.tensor(out, dtype=torch.float64)


def test_coherence_chunking_and_reference_formula():
    gen = torch.Generator().manual_seed(3)
    h, w, n = 23, 31, 37
    heat = torch.rand(h, w, generator=gen)
    prior = direction_prior("middle", h, w)
    masks = torch.rand(n, h, w, generator=gen) > 0.6
    g1 = coherence_scores(heat, prior, masks, 1.95, chunk=1)
    g16 = coherence_scores(heat, prior, masks, 1.95)
    g_big = coherence_scores(heat, prior, masks, 1.95, chunk=10_000)
    torch.testing.assert_close(g1, g16, atol=1e-6, rtol=0)
    torch.testing.assert_close(g1, g_big, atol=1e-6, rtol=0)
    ref = _coherence_reference(heat, prior, masks, 1.95)
    torch.testing.assert_close(g1.double(), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- beta_for / final_scores


def test_beta_for():
    assert beta_for("big") == 1.95
    assert beta_for("small") == 1.5
    assert beta_for("left") == 1.8
    assert beta_for("none") == 1.8
    assert beta_for(None) == 1.8
    assert beta_for("big", big=2.0, small=1.0, default=1.7) == 2.0
    assert beta_for("within", default=1.7) == 1.7


def test_final_scores():
    # .4 * [.5, .3, .2] + .6 * [1, -1, 0] = [.2 + .6, .12 - .6, .08 + 0] = [.8, -.48, .08]
    out = final_scores(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([1.0, -1.0, 0.0]), 0.6)
    close(out, [0.8, -0.48, 0.08])
    # alpha = 0 -> r; alpha = 1 -> g
    close(final_scores(torch.tensor([0.7]), torch.tensor([2.0]), 0.0), [0.7])
    close(final_scores(torch.tensor([0.7]), torch.tensor([2.0]), 1.0), [2.0])
    with pytest.raises(ValueError):
        final_scores(torch.ones(2), torch.ones(3), 0.5)

"""Metrics of the RefCOCO protocol against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from hybridgl.eval.metrics import (
    best_proposal,
    intersection_union,
    iou_from_counts,
    metrics_table,
    proposal_counts,
    summarize_counts,
    summarize_records,
)


def m(rows: list[str]) -> np.ndarray:
    """A bool mask from strings of '.' and '#'."""
    return np.array([[c == "#" for c in r] for r in rows], dtype=bool)


def test_intersection_union_by_hand():
    pred = m(["##.", "..."])
    gt = m(["#..", "#.."])
    assert intersection_union(pred, gt) == (1, 3)
    assert iou_from_counts(1, 3) == pytest.approx(1 / 3)


def test_identical_masks_score_one():
    gt = m([".#", "##"])
    i, u = intersection_union(gt, gt)
    assert (i, u) == (3, 3)
    assert iou_from_counts(i, u) == 1.0


def test_empty_prediction_scores_zero():
    gt = m(["##", ".."])
    i, u = intersection_union(np.zeros_like(gt), gt)
    assert (i, u) == (0, 2)
    assert iou_from_counts(i, u) == 0.0


def test_empty_prediction_and_empty_gt_scores_zero():
    # union 0: IoU is defined as 0, as in the reference's Compute_IoU
    z = np.zeros((2, 3), dtype=bool)
    assert intersection_union(z, z) == (0, 0)
    assert iou_from_counts(0, 0) == 0.0
    s = summarize_counts([(0, 0)])
    assert s["mIoU"] == 0.0 and s["oIoU"] == 0.0 and s["P@0.5"] == 0.0


def test_prediction_against_empty_gt_scores_zero():
    pred = m(["#.", ".."])
    i, u = intersection_union(pred, np.zeros_like(pred))
    assert (i, u) == (0, 1)
    assert iou_from_counts(i, u) == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        intersection_union(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_oiou_differs_from_miou():
    # a small object found perfectly, a large one missed:
    # mIoU = (1 + 0) / 2 = 50 %, oIoU = (1 + 0) / (1 + 99) = 1 %
    s = summarize_counts([(1, 1), (0, 99)])
    assert s["n"] == 2
    assert s["mIoU"] == pytest.approx(50.0)
    assert s["oIoU"] == pytest.approx(1.0)
    # and the other way round: a small object missed, a large one nearly right
    s = summarize_counts([(0, 10), (90, 100)])
    assert s["mIoU"] == pytest.approx(45.0)
    assert s["oIoU"] == pytest.approx(100 * 90 / 110)


def test_precision_counts_iou_at_or_above_threshold():
    # IoUs 1.0, 0.5, 0.59, 0.0, 0.9
    pairs = [(4, 4), (1, 2), (59, 100), (0, 5), (9, 10)]
    s = summarize_counts(pairs)
    assert s["P@0.5"] == pytest.approx(80.0)  # 1.0, 0.5, 0.59, 0.9
    assert s["P@0.6"] == pytest.approx(40.0)  # 1.0, 0.9
    assert s["P@0.7"] == pytest.approx(40.0)
    assert s["P@0.8"] == pytest.approx(40.0)
    assert s["P@0.9"] == pytest.approx(40.0)  # 0.9 counts (>=)
    assert s["mIoU"] == pytest.approx(100 * (1 + 0.5 + 0.59 + 0 + 0.9) / 5)
    assert s["oIoU"] == pytest.approx(100 * (4 + 1 + 59 + 0 + 9) / (4 + 2 + 100 + 5 + 10))


def test_no_records_gives_none():
    s = summarize_counts([])
    assert s["n"] == 0 and s["mIoU"] is None and s["oIoU"] is None and s["P@0.9"] is None


def test_summarize_records_leaves_out_failed_records():
    recs = [
        {"pure_i": 1, "pure_u": 2, "guided_i": 2, "guided_u": 2, "upper_i": 2, "upper_u": 2},
        {"error": "missing image", "pure_i": None, "pure_u": None},
        {"pure_i": 0, "pure_u": 4, "guided_i": 1, "guided_u": 4, "upper_i": 4, "upper_u": 4},
    ]
    out = summarize_records(recs)
    assert out["pure"]["n"] == 2
    assert out["pure"]["mIoU"] == pytest.approx(25.0)
    assert out["pure"]["oIoU"] == pytest.approx(100 / 6)
    assert out["guided"]["mIoU"] == pytest.approx(100 * (1 + 0.25) / 2)
    assert out["upper"]["mIoU"] == pytest.approx(100.0)


def test_result_does_not_depend_on_record_order():
    rng = np.random.default_rng(0)
    pairs = [(int(a), int(a + b)) for a, b in rng.integers(0, 10_000, size=(500, 2))]
    assert summarize_counts(pairs) == summarize_counts(pairs[::-1])


def test_proposal_counts_and_best_proposal():
    gt = m(["##..", "##..", "...."])
    masks = np.stack(
        [
            m(["#...", "....", "...."]),  # I 1, U 4
            m(["####", "####", "...."]),  # I 4, U 8
            m(["##..", "##..", "...."]),  # I 4, U 4 (exact)
            m(["..##", "..##", "...."]),  # I 0, U 8
        ]
    )
    inter, union = proposal_counts(masks, gt)
    assert inter.tolist() == [1, 4, 4, 0]
    assert union.tolist() == [4, 8, 4, 8]
    for k in range(4):
        assert (inter[k], union[k]) == intersection_union(masks[k], gt)
    assert best_proposal(masks, gt) == (2, 4, 4)


def test_best_proposal_ties_and_no_proposal():
    gt = m(["#.", ".#"])
    masks = np.stack([m(["#.", ".."]), m(["..", ".#"])])  # both IoU 1/2
    assert best_proposal(masks, gt) == (0, 1, 2)
    assert best_proposal(np.zeros((0, 2, 2), bool), gt) == (None, 0, 2)


def test_metrics_table_is_markdown():
    rec = {}
    for k in ("pure", "guided", "upper"):
        rec[f"{k}_i"], rec[f"{k}_u"] = 1, 2
    table = metrics_table(summarize_records([rec]))
    lines = table.splitlines()
    assert lines[0].startswith("| prediction | n | mIoU | oIoU | P@0.5")
    assert len(lines) == 5
    assert "| pure (CLIP only) | 1 | 50.00 | 50.00 | 100.00 | 0.00" in table

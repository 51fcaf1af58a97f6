"""Segmentation metrics of the RefCOCO-family protocol (METHOD.md, "Evaluation protocol").

The unit is one referring expression. For a predicted mask ``P`` and the ground-truth
mask ``G`` (both ``(H, W)`` bool at the original resolution):

* ``I = |P and G|`` and ``U = |P or G|`` (pixel counts);
* ``IoU = I / U``, and ``IoU = 0`` when ``U == 0`` (an empty prediction against an empty
  ground truth scores 0, as the reference's ``Compute_IoU`` does; it cannot happen with
  valid RefCOCO data, whose objects all have pixels);
* ``mIoU`` = mean of the per-expression IoU, in percent;
* ``oIoU`` = sum of ``I`` over sum of ``U`` (over all expressions), in percent; 0 when
  the sum of ``U`` is 0;
* ``P@t`` = percentage of expressions with ``IoU >= t`` for t in 0.5 ... 0.9.

Sums use :func:`math.fsum`, so a report does not depend on the order of its records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)

#: The three predictions a record carries: CLIP alone, with spatial guidance, and the
#: best proposal (an upper bound for any method choosing among the same proposals).
KINDS: tuple[str, ...] = ("pure", "guided", "upper")
KIND_TITLES: dict[str, str] = {
    "pure": "pure (CLIP only)",
    "guided": "guided (HybridGL)",
    "upper": "upper bound (best proposal)",
}


def iou_from_counts(intersection: int, union: int) -> float:
    """``I / U``, defined as 0 when ``U == 0``."""
    if union <= 0:
        return 0.0
    return float(intersection) / float(union)


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel counts ``(|P and G|, |P or G|)`` of two ``(H, W)`` bool masks.

    Raises:
        ValueError: the shapes differ.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    p = pred.astype(bool, copy=False)
    g = gt.astype(bool, copy=False)
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


def proposal_counts(masks: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersections and unions of every proposal with the ground truth.

    Args:
        masks: ``(N, H, W)`` bool proposals.
        gt: ``(H, W)`` bool ground truth.

    Returns:
        Two ``(N,)`` int64 arrays ``I`` and ``U``.
    """
    if masks.ndim != 3 or masks.shape[1:] != gt.shape:
        raise ValueError(f"proposal shape {masks.shape} does not match ground truth {gt.shape}")
    n = masks.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat = masks.reshape(n, -1).astype(bool, copy=False)
    g = gt.reshape(-1).astype(bool, copy=False)
    inter = np.count_nonzero(flat & g, axis=1).astype(np.int64)
    area = np.count_nonzero(flat, axis=1).astype(np.int64)
    union = area + int(np.count_nonzero(g)) - inter
    return inter, union


def best_proposal(masks: np.ndarray, gt: np.ndarray) -> tuple[int | None, int, int]:
    """The proposal with the highest IoU: ``(index, I, U)``; ``(None, 0, U_gt)`` if none.

    Ties go to the lowest index. With no proposal the upper bound is an empty prediction:
    ``I = 0`` and ``U = |G|``.
    """
    inter, union = proposal_counts(masks, gt)
    if inter.size == 0:
        return None, 0, int(np.count_nonzero(gt))
    ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    k = int(np.argmax(ious))
    return k, int(inter[k]), int(union[k])


def summarize_counts(
    pairs: Sequence[tuple[int, int]], thresholds: Iterable[float] = THRESHOLDS
) -> dict[str, Any]:
    """Metrics of one kind of prediction from its ``(I, U)`` pairs.

    Returns:
        ``{"n", "mIoU", "oIoU", "P@0.5", ...}``; mIoU, oIoU and precisions in percent,
        each ``None`` when there is no pair.
    """
    n = len(pairs)
    out: dict[str, Any] = {"n": n}
    ious = [iou_from_counts(i, u) for i, u in pairs]
    if n == 0:
        out["mIoU"] = None
        out["oIoU"] = None
        for t in thresholds:
            out[f"P@{t:g}"] = None
        return out
    total_u = math.fsum(u for _, u in pairs)
    total_i = math.fsum(i for i, _ in pairs)
    out["mIoU"] = 100.0 * math.fsum(ious) / n
    out["oIoU"] = 100.0 * total_i / total_u if total_u > 0 else 0.0
    for t in thresholds:
        out[f"P@{t:g}"] = 100.0 * sum(1 for v in ious if v >= t) / n
    return out


def summarize_records(
    records: Iterable[Mapping[str, Any]], thresholds: Iterable[float] = THRESHOLDS
) -> dict[str, dict[str, Any]]:
    """Metrics per kind (``pure``, ``guided``, ``upper``) over successful records.

    A record is successful when its ``error`` is empty; it carries ``<kind>_i`` and
    ``<kind>_u`` for each kind. Failed records are left out (the caller counts them).
    """
    thresholds = tuple(thresholds)
    ok = [r for r in records if not r.get("error")]
    return {
        kind: summarize_counts([(int(r[f"{kind}_i"]), int(r[f"{kind}_u"])) for r in ok], thresholds)
        for kind in KINDS
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per kind, columns mIoU, oIoU and P@t (percent)."""
    first = next(iter(metrics.values()))
    cols = [k for k in first if k != "n"]
    lines = [
        "| prediction | n | " + " | ".join(cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for kind, m in metrics.items():
        title = KIND_TITLES.get(kind, kind)
        lines.append(f"| {title} | {m['n']} | " + " | ".join(_fmt(m[c]) for c in cols) + " |")
    return "\n".join(lines)


#: IoU thresholds of the GRES precision (Pr@0.7, Pr@0.8, Pr@0.9).
GRES_THRESHOLDS: tuple[float, ...] = (0.7, 0.8, 0.9)


def gres_metrics(
    samples: Iterable[tuple[bool, bool, int, int]],
    thresholds: Iterable[float] = GRES_THRESHOLDS,
) -> dict[str, Any]:
    """The metrics of gRefCOCO (GRES, CVPR 2023) from ``(gt_no_target, pred_no_target, I, U)``.

    As the GRES reference evaluation computes them, per expression:

    - no-target expression answered with no target: IoU 1 (counts in gIoU), nothing added
      to the cumulative I and U; answered with a mask: IoU 0, and the mask's area (its
      union with the empty ground truth, ``U``) is added to the cumulative U;
    - target expression: ``IoU = I / U`` (0 when ``U == 0``; ``I`` counts 0 when it was
      answered with no target), added to gIoU, cumulative I and U, and to Pr@t when
      ``IoU >= t``.

    ``gIoU`` = mean IoU over all expressions; ``cIoU`` = cumulative I / cumulative U;
    ``N-acc`` = no-target expressions answered with no target / no-target expressions;
    ``T-acc`` = target expressions answered with a target / target expressions (the
    paper's definitions); ``Pr@t`` over target expressions. All in percent; None where the
    denominator is 0. The released evaluation code divides with a +1 in the denominator and
    computes its ``T_acc`` as ``TP / (TP + FP + 1)`` (TP: no-target answered no-target, FP:
    target answered no-target); those two values are given as ``code_N_acc`` and
    ``code_T_acc`` (fractions, as that code prints them) to compare with its logs.

    Returns:
        ``{"n", "n_target", "n_no_target", "gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7",
        ..., "code_N_acc", "code_T_acc"}``.
    """
    thresholds = tuple(thresholds)
    ious: list[float] = []
    acc_i: list[float] = []
    acc_u: list[float] = []
    tp = fn = fp = tn = 0
    hits = dict.fromkeys(thresholds, 0)
    for gt_nt, pred_nt, i, u in samples:
        if gt_nt:
            if pred_nt:
                tp += 1
                ious.append(1.0)
            else:
                fn += 1
                ious.append(0.0)
                acc_u.append(float(u))
            continue
        if pred_nt:
            fp += 1
            i = 0
        else:
            tn += 1
        iou = iou_from_counts(i, u)
        ious.append(iou)
        acc_i.append(float(i))
        acc_u.append(float(u))
        for t in thresholds:
            if iou >= t:
                hits[t] += 1
    n = len(ious)
    n_target = tn + fp
    n_nt = tp + fn
    total_u = math.fsum(acc_u)
    out: dict[str, Any] = {
        "n": n,
        "n_target": n_target,
        "n_no_target": n_nt,
        "gIoU": 100.0 * math.fsum(ious) / n if n else None,
        "cIoU": 100.0 * math.fsum(acc_i) / total_u if total_u > 0 else None,
        "N-acc": 100.0 * tp / n_nt if n_nt else None,
        "T-acc": 100.0 * tn / n_target if n_target else None,
    }
    for t in thresholds:
        out[f"Pr@{t:g}"] = 100.0 * hits[t] / n_target if n_target else None
    out["code_N_acc"] = tp / (tp + fn + 1) if n_nt else 0
    out["code_T_acc"] = tp / (tp + fp + 1) if n_nt else 0
    return out


def gres_from_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`gres_metrics` of the successful evaluation records (guided prediction).

    A record answers "no target" when ``found`` is false; ``no_target`` is its ground truth.
    """
    ok = [r for r in records if not r.get("error")]
    return gres_metrics(
        (bool(r.get("no_target")), not r.get("found"), int(r["guided_i"]), int(r["guided_u"]))
        for r in ok
    )

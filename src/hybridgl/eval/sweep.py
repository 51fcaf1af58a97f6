"""Replaying the target rules offline: the GRES metrics of any thresholds from one pass.

``hybridgl calibrate`` runs the method once per expression with the no-target tests open
(:func:`hybridgl.eval.calibrate.open_rules`) and stores a :class:`Sample`: the evidence
(the best region's cosine with the phrase and with each contrast prompt), the candidate
pool with its target scores and cosines, the pool's pairwise overlaps at the working
resolution (what :func:`hybridgl.targets.dedupe` sees) and a histogram of pixel
signatures against the ground truth at the input resolution (which pool masks and whether
the ground truth cover each pixel). :func:`replay` then applies any
:class:`~hybridgl.targets.TargetRules` with the same functions ``predict`` uses
(:func:`~hybridgl.targets.no_target_check`, :func:`~hybridgl.targets.eligible_targets`,
:func:`~hybridgl.targets.dedupe`) and returns the ``(gt_no_target, pred_no_target, I, U)``
of :func:`hybridgl.eval.metrics.gres_metrics`: exactly what an evaluation with those
thresholds would count, without running a model again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hybridgl.eval.metrics import gres_metrics
from hybridgl.targets import TargetRules, dedupe, eligible_targets, no_target_check

#: The thresholds ``calibrate`` sweeps and fits, in the order they are fitted.
SWEPT: tuple[str, ...] = ("floor", "contrast_margin", "margin", "cosine_margin")

#: What ``calibrate`` can maximise.
OBJECTIVES: tuple[str, ...] = ("gIoU", "cIoU", "balanced")


@dataclass(frozen=True)
class Sample:
    """One expression of the pass (JSON-ready through :meth:`to_dict`).

    Attributes:
        key: the expression's id (dataset, split, sent_id).
        no_target: the ground truth names nothing.
        gt_area: ground-truth pixels.
        rule: ``no_proposal`` (nothing can be found) or the pass's own rule.
        cosine, contrast: the no-target evidence of the best region.
        several: several targets looked for (``many``; ``auto`` with a number cue).
        guided: the target scores are guided scores (the score margin applies).
        pool: ``(index, score, cosine)`` per pool position; position 0.. in pool order; the
            best proposal is ``best``.
        best: the best proposal's index (the ``"one"`` answer).
        inter: pairwise intersections of the pool's working-resolution masks.
        hist: ``(signature, pixels)``: bit ``k`` set when pool position ``k`` covers the
            pixel, bit ``len(pool)`` when the ground truth does; pixels covered by nothing
            are left out.
    """

    key: str
    no_target: bool
    gt_area: int
    rule: str
    cosine: float | None = None
    contrast: tuple[tuple[str, float], ...] = ()
    several: bool = False
    guided: bool = False
    best: int | None = None
    pool: tuple[tuple[int, float, float], ...] = ()
    inter: tuple[tuple[int, ...], ...] = ()
    hist: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "no_target": self.no_target,
            "gt_area": self.gt_area,
            "rule": self.rule,
            "cosine": self.cosine,
            "contrast": [list(c) for c in self.contrast],
            "several": self.several,
            "guided": self.guided,
            "best": self.best,
            "pool": [list(p) for p in self.pool],
            "inter": [list(r) for r in self.inter],
            "hist": [list(h) for h in self.hist],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Sample:
        return cls(
            key=str(d["key"]),
            no_target=bool(d["no_target"]),
            gt_area=int(d["gt_area"]),
            rule=str(d["rule"]),
            cosine=None if d.get("cosine") is None else float(d["cosine"]),
            contrast=tuple((str(k), float(v)) for k, v in d.get("contrast") or []),
            several=bool(d.get("several")),
            guided=bool(d.get("guided")),
            best=None if d.get("best") is None else int(d["best"]),
            pool=tuple((int(i), float(s), float(c)) for i, s, c in d.get("pool") or []),
            inter=tuple(tuple(int(v) for v in r) for r in d.get("inter") or []),
            hist=tuple((int(s), int(n)) for s, n in d.get("hist") or []),
        )


def signature_histogram(masks: np.ndarray, gt: np.ndarray) -> tuple[tuple[int, int], ...]:
    """:attr:`Sample.hist` of ``(K, H, W)`` pool masks and the ``(H, W)`` ground truth."""
    k = int(masks.shape[0])
    if k > 62:
        raise ValueError(f"at most 62 pool masks fit a signature, got {k}")
    sig = np.zeros(gt.shape, dtype=np.int64)
    for b in range(k):
        sig |= masks[b].astype(np.int64) << b
    sig |= gt.astype(np.int64) << k
    values, counts = np.unique(sig[sig != 0], return_counts=True)
    return tuple((int(v), int(n)) for v, n in zip(values, counts, strict=True))


def sample_of(pred: Any, state: Any, gt: np.ndarray, key: str, no_target: bool) -> Sample:
    """The :class:`Sample` of one prediction made with the no-target tests open.

    Args:
        pred: the :class:`~hybridgl.types.Prediction` (``targets`` many or auto).
        state: the image's :class:`~hybridgl.state.ImageState` (its working-resolution
            masks give the overlaps ``dedupe`` sees, its input masks the pixels).
        gt: ``(H, W)`` ground truth at the input resolution (empty: no target).
        key: the expression's id.
        no_target: the ground truth names nothing.
    """
    from hybridgl.targets import overlap_counts

    ev = pred.evidence
    gt_area = int(np.count_nonzero(gt))
    if ev.best_index is None or ev.cosine is None or ev.rule == "no_proposal":
        return Sample(key=key, no_target=no_target, gt_area=gt_area, rule="no_proposal")
    best = int(ev.best_index)
    pool = tuple(ev.pool) if ev.several else ((best, 0.0, float(ev.cosine)),)
    idx = [i for i, _, _ in pool]
    inter, _ = overlap_counts(np.asarray(state.masks)[idx])
    masks = np.stack([np.asarray(state.input_mask(i), dtype=bool) for i in idx])
    return Sample(
        key=key,
        no_target=no_target,
        gt_area=gt_area,
        rule=str(ev.rule),
        cosine=float(ev.cosine),
        contrast=tuple((str(k), float(v)) for k, v in ev.contrast.items()),
        several=bool(ev.several),
        guided=ev.margin is not None,
        best=best,
        pool=pool,
        inter=tuple(tuple(int(v) for v in row) for row in inter),
        hist=signature_histogram(masks, np.asarray(gt, dtype=bool)),
    )


def _union_counts(sample: Sample, positions: Sequence[int]) -> tuple[int, int]:
    """``(I, U)`` of the union of the pool ``positions`` with the ground truth."""
    gt_bit = 1 << len(sample.pool)
    chosen = 0
    for p in positions:
        chosen |= 1 << p
    i = u = 0
    for sig, n in sample.hist:
        inside = bool(sig & chosen)
        in_gt = bool(sig & gt_bit)
        if inside and in_gt:
            i += n
        if inside or in_gt:
            u += n
    return i, u


def replay(sample: Sample, rules: TargetRules) -> tuple[bool, bool, int, int]:
    """``(gt_no_target, pred_no_target, I, U)`` of ``sample`` under ``rules``: the
    answer ``predict`` would give with these thresholds (the pool size, the contrast
    prompts and the mode being those of the pass)."""
    empty = (sample.no_target, True, 0, sample.gt_area)
    if sample.rule == "no_proposal" or sample.cosine is None or sample.best is None:
        return empty
    found, _ = no_target_check(
        sample.cosine, dict(sample.contrast), rules.floor, rules.contrast_margin
    )
    if not found:
        return empty
    where = {i: k for k, (i, _, _) in enumerate(sample.pool)}
    first = where[sample.best]
    if not sample.several:
        positions = [first]
    else:
        idx = [i for i, _, _ in sample.pool]
        ranked = eligible_targets(
            sample.best,
            idx,
            [s for _, s, _ in sample.pool],
            [c for _, _, c in sample.pool],
            rules.margin if sample.guided else None,
            rules.cosine_margin,
        )
        pos = [where[i] for i in ranked]
        full = np.asarray(sample.inter, dtype=np.int64)
        inter = full[np.ix_(pos, pos)]
        kept = dedupe(
            inter, np.diag(inter).copy(), rules.dedup_iou, rules.containment, rules.max_targets
        )
        positions = [pos[k] for k in kept]
    i, u = _union_counts(sample, positions)
    return sample.no_target, False, i, u


def metrics(samples: Iterable[Sample], rules: TargetRules) -> dict[str, Any]:
    """:func:`gres_metrics` of every sample replayed under ``rules``."""
    return gres_metrics(replay(s, rules) for s in samples)


def objective_value(m: Mapping[str, Any], objective: str) -> float:
    """The number ``objective`` maximises (``balanced``: the mean of N-acc and T-acc, or
    T-acc alone without no-target expressions); -inf when undefined."""
    if objective == "balanced":
        parts = [m[k] for k in ("N-acc", "T-acc") if m.get(k) is not None]
        v = sum(parts) / len(parts) if parts else None
    else:
        v = m.get(objective)
    return float(v) if v is not None else -math.inf


def grid(samples: Sequence[Sample], name: str, base: float, points: int = 21) -> list[float]:
    """Candidate values of threshold ``name``: quantiles of the quantity it is compared
    with over the samples (so the sweep spans the data whatever the model), the base
    value, and one value past each end (everything passes / nothing passes)."""
    values: list[float] = []
    for s in samples:
        if s.cosine is None:
            continue
        if name == "floor":
            values.append(s.cosine)
        elif name == "contrast_margin":
            if s.contrast:
                values.append(s.cosine - max(v for _, v in s.contrast))
        elif s.several and len(s.pool) > 1:
            best = next(p for p in s.pool if p[0] == s.best)
            for p in s.pool:
                if p[0] != s.best:
                    values.append(best[1] - p[1] if name == "margin" else best[2] - p[2])
    finite = [v for v in values if math.isfinite(v)]
    out = {float(base)}
    if finite:
        qs = np.quantile(np.asarray(finite), np.linspace(0.0, 1.0, points))
        out.update(float(q) for q in qs)
        lo, hi = min(finite), max(finite)
        pad = max(1e-3, 0.05 * (hi - lo))
        out.update((lo - pad, hi + pad))
    return sorted(out)


def with_value(rules: TargetRules, name: str, value: float) -> TargetRules:
    """``rules`` with threshold ``name`` (one of :data:`SWEPT`) set to ``value``."""
    if name not in SWEPT:
        raise ValueError(f"cannot sweep {name!r}; the swept thresholds are {list(SWEPT)}")
    kw: dict[str, Any] = {name: float(value)}
    return replace(rules, **kw)


def sweep(
    samples: Sequence[Sample], rules: TargetRules, name: str, values: Sequence[float]
) -> list[dict[str, Any]]:
    """The metrics at each value of threshold ``name``, the others as in ``rules``."""
    return [
        {"threshold": name, "value": v, **metrics(samples, with_value(rules, name, v))}
        for v in values
    ]


def fit(
    samples: Sequence[Sample],
    base: TargetRules,
    objective: str = "gIoU",
    names: Sequence[str] = SWEPT,
    rounds: int = 2,
    points: int = 21,
) -> tuple[TargetRules, dict[str, list[dict[str, Any]]]]:
    """Coordinate ascent: each threshold in turn takes its best grid value (ties: the value
    nearest the base's), the others held; ``rounds`` passes over ``names``.

    Returns:
        The fitted rules and, per threshold, its sweep around the fitted rules (the last
        round's table: each row is an evaluation of those rules with that one value).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    grids = {n: grid(samples, n, getattr(base, n), points) for n in names}
    rules = base
    tables: dict[str, list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for n in names:
            rows = sweep(samples, rules, n, grids[n])
            ref = getattr(base, n)
            best = max(rows, key=lambda r: (objective_value(r, objective), -abs(r["value"] - ref)))
            rules = with_value(rules, n, best["value"])
            tables[n] = rows
    for n in names:  # the tables around the final rules
        tables[n] = sweep(samples, rules, n, grids[n])
    return rules, tables

"""The evaluation task: which expressions, one work unit per image, one record per expression.

:func:`make_units` groups the selected expressions by image; :class:`EvalTask` is what a
worker (local or Ray, :mod:`hybridgl.jobs.engine`) runs on one unit: it loads the image,
encodes it once, answers every expression with ``predict_many`` and compares each answer
with its ground truth (:func:`evaluate_unit`). The records' fields are
:data:`RECORD_FIELDS`; :mod:`hybridgl.eval.runner` writes them, :mod:`hybridgl.eval.report`
sums them up.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import DataError
from hybridgl.eval.annotations import lookup_ann_mask
from hybridgl.eval.metrics import best_proposal, intersection_union, iou_from_counts
from hybridgl.eval.refer import EvalData, Expression
from hybridgl.images import DEFAULT_MAX_PIXELS
from hybridgl.jobs.units import UnitWorker, WorkUnit, encode_state, predict_on_state

log = logging.getLogger("hybridgl.eval")

#: Record fields, in order.
RECORD_FIELDS: tuple[str, ...] = (
    "dataset",
    "split",
    "image_id",
    "ref_id",
    "ann_id",
    "sent_id",
    "sentence",
    "parse",
    "num_proposals",
    "gt_area",
    "pure_index",
    "pure_iou",
    "pure_i",
    "pure_u",
    "guided_iou",
    "guided_i",
    "guided_u",
    "upper_index",
    "upper_iou",
    "upper_i",
    "upper_u",
    "score",
    "found",
    "no_target",
    "num_targets",
    "time_s",
    "image_time_s",
    "error",
    "error_kind",
)
# A successful record also carries every key of Prediction.to_dict() (the one record
# shape, flat; without "timings": time_s has the time), among them "index", the chosen
# proposal, which the guided_* counts are of.

# --------------------------------------------------------------------------- selection


def select_expressions(
    expressions: Sequence[Expression],
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> list[Expression]:
    """A subset in the data's order: a seeded random ``sample``, then the first ``limit``."""
    chosen = list(expressions)
    if sample is not None:
        if sample < 0:
            raise ValueError("--sample must be >= 0")
        if sample < len(chosen):
            idx = sorted(random.Random(seed).sample(range(len(chosen)), sample))
            chosen = [chosen[k] for k in idx]
    if limit is not None:
        if limit < 0:
            raise ValueError("--limit must be >= 0")
        chosen = chosen[:limit]
    return chosen


# --------------------------------------------------------------------------- records


def _counts_fields(prefix: str, index: int | None, i: int, u: int) -> dict[str, Any]:
    out = {} if prefix == "guided" else {f"{prefix}_index": index}  # guided: "index"
    return {
        **out,
        f"{prefix}_iou": iou_from_counts(i, u),
        f"{prefix}_i": int(i),
        f"{prefix}_u": int(u),
    }


class _ImageFailure(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def row_of(data: EvalData, e: Expression) -> dict[str, Any]:
    """The payload of one expression in a work unit (JSON-ready)."""
    return {
        "dataset": data.name,
        "split": data.split,
        "image_id": e.image_id,
        "ref_id": e.ref_id,
        "ann_id": e.ann_id,
        "sent_id": e.sent_id,
        "sentence": e.sentence,
    }


def record_key(rec: dict[str, Any]) -> str | None:
    """The id of an evaluation record: dataset, split and sent_id."""
    if not isinstance(rec, dict) or "sent_id" not in rec:
        return None
    return f"{rec.get('dataset')}\t{rec.get('split')}\t{rec['sent_id']}"


def failed_record(row: dict[str, Any], error: str, kind: str) -> dict[str, Any]:
    rec: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    rec.update({k: row.get(k) for k in ("dataset", "split", "image_id", "ref_id", "ann_id")})
    rec.update(sent_id=row.get("sent_id"), sentence=row.get("sentence"))
    rec["error"] = error
    rec["error_kind"] = kind
    return rec


def ann_id_list(ann_id: Any) -> list[Any]:
    """The annotation ids of an expression: one id, or a list/tuple (gRefCOCO, PhraseCut;
    empty for no target)."""
    if isinstance(ann_id, (list, tuple)):
        return list(ann_id)
    return [ann_id]


def make_units(
    parts: Sequence[tuple[EvalData, Sequence[Expression]]], proposals: str
) -> list[WorkUnit]:
    """One unit per image, with the expressions of every dataset and split that use it.

    RefCOCO and RefCOCO+ share their images: an image is encoded once for all of them.
    With ``proposals="gt"`` the unit key also holds the image's annotation ids (the
    proposals), so images whose annotation sets differ between datasets stay apart.
    """
    units: dict[str, WorkUnit] = {}
    for data, exprs in parts:
        for e in exprs:
            path = str(data.image_path(e.image_id))
            ann_ids = data.image_ann_ids(e.image_id)
            key = path if proposals != "gt" else f"{path}\t{','.join(map(str, ann_ids))}"
            unit = units.get(key)
            if unit is None:
                size = data.image_size(e.image_id)
                unit = units[key] = WorkUnit(
                    key=key,
                    rows=[],
                    data={
                        "image_path": path,
                        "size": list(size) if size else None,
                        "image_ann_ids": ann_ids,
                        "anns": [],
                    },
                )
            known = {a[0] for a in unit.data["anns"]}
            for ann_id in [*ann_ids, *ann_id_list(e.ann_id)]:
                if ann_id not in known and ann_id in data.annotations:
                    unit.data["anns"].append([ann_id, data.annotations[ann_id]])
                    known.add(ann_id)
            unit.rows.append(row_of(data, e))
    return list(units.values())


@dataclass
class EvalTask:
    """What a worker does with one image of an evaluation (see :func:`evaluate_unit`)."""

    proposals: str = "sam"
    top_k: int = 3
    guidance: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    targets: str = "one"
    thresholds: dict[str, Any] | None = None  # TargetRules.to_dict() (plain, for Ray)
    calibration: bool = False  # records carry the calibration sample (hybridgl calibrate)

    def run(self, worker: UnitWorker, unit: WorkUnit) -> list[dict[str, Any]]:
        return evaluate_unit(
            worker,
            unit,
            self.proposals,
            self.top_k,
            self.guidance,
            max_pixels=self.max_pixels,
            targets=self.targets,
            thresholds=self.thresholds,
            calibration=self.calibration,
        )

    def failed(self, unit: WorkUnit, error: BaseException) -> list[dict[str, Any]]:
        msg = f"internal error: {type(error).__name__}: {error}"
        return [failed_record(r, msg, "internal") for r in unit.rows]


def _prediction_dict(pred: Any) -> dict[str, Any] | None:
    """The prediction in the one result format (``Prediction.to_dict``), without timings."""
    to_dict = getattr(pred, "to_dict", None)
    if to_dict is None:
        return None
    d = dict(to_dict())
    d.pop("timings", None)  # per-run noise; the record's time_s has the time
    return d


def _gt_key(ids: list[Any]) -> str:
    return "\t".join(str(i) for i in ids)


def _gt_proposals(unit: WorkUnit, anns: dict[Any, Any], height: int, width: int) -> np.ndarray:
    masks = []
    for ann_id in unit.data.get("image_ann_ids") or []:
        try:
            m = lookup_ann_mask(anns, ann_id, height, width)
        except DataError as e:
            log.warning("%s: ground-truth proposal skipped: %s", unit.data["image_path"], e)
            continue
        if m.any():
            masks.append(m)
    if not masks:
        return np.zeros((0, height, width), dtype=bool)
    return np.stack(masks)


def _load(unit: WorkUnit, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    from hybridgl.errors import ImageError
    from hybridgl.images import load_image

    path = Path(unit.data["image_path"])
    if not path.is_file():
        raise _ImageFailure(f"missing image: {path}", "missing_image")
    try:
        image = load_image(path, max_pixels=max_pixels)
    except ImageError as e:
        raise _ImageFailure(f"unreadable image {path}: {e}", "bad_image") from None
    h, w = image.shape[:2]
    size = unit.data.get("size")
    if size is not None and tuple(size) != (h, w):
        raise _ImageFailure(
            f"image {path} is {h}x{w} but instances.json says {size[0]}x{size[1]}",
            "size_mismatch",
        )
    return image


def evaluate_unit(
    worker: UnitWorker,
    unit: WorkUnit,
    proposals: str = "sam",
    top_k: int = 3,
    guidance: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    targets: str = "one",
    thresholds: dict[str, Any] | None = None,
    calibration: bool = False,
) -> list[dict[str, Any]]:
    """Records for every expression of one image: one encoding, one ``predict_many``.

    An expression's ground truth is the union of its annotations' masks (one for
    RefCOCO; several or none, "no target", for gRefCOCO and PhraseCut). ``targets`` and
    ``thresholds`` go to ``predict_many`` (:func:`hybridgl.targets.target_kwargs`).
    With ``calibration`` each record also carries ``calibration``: the
    :class:`hybridgl.eval.sweep.Sample` that replays the target rules offline.
    """
    from hybridgl.targets import target_kwargs

    options = target_kwargs(targets, thresholds)
    t0 = time.perf_counter()
    anns = {a[0]: a[1] for a in unit.data.get("anns") or []}
    rows = unit.rows
    try:
        image = _load(unit, max_pixels)
        h, w = image.shape[:2]
        masks = _gt_proposals(unit, anns, h, w) if proposals == "gt" else None
        segmenter = worker.segmenter
        try:
            state = encode_state(segmenter, image, masks, max_pixels)
        except Exception as e:
            raise _ImageFailure(
                f"encoding failed on {unit.data['image_path']}: {type(e).__name__}: {e}",
                "prediction_failed",
            ) from None
        # at the input resolution, where the ground truth is (state.masks are at the
        # working resolution when the image's long side exceeds max_side)
        props = state.input_masks()
        if props.size == 0:
            props = np.zeros((0, h, w), dtype=bool)
        if props.ndim != 3 or props.shape[1:] != (h, w):
            raise _ImageFailure(
                f"proposals of {unit.data['image_path']} have shape {props.shape}, "
                f"expected (N, {h}, {w})",
                "prediction_failed",
            )
    except _ImageFailure as f:
        return [failed_record(r, str(f), f.kind) for r in rows]
    image_time = time.perf_counter() - t0

    records: dict[int, dict[str, Any]] = {}
    gts: dict[Any, tuple[np.ndarray, tuple[int | None, int, int]]] = {}
    todo: list[tuple[int, dict[str, Any]]] = []
    for k, r in enumerate(rows):
        ids = ann_id_list(r["ann_id"])
        key = _gt_key(ids)
        if key not in gts:
            if not ids:  # no target: the empty mask; the best proposal is none at all
                gts[key] = (np.zeros((h, w), dtype=bool), (None, 0, 0))
            else:
                try:
                    gt = np.zeros((h, w), dtype=bool)
                    for ann_id in ids:
                        gt |= lookup_ann_mask(anns, ann_id, h, w)
                except DataError as err:
                    records[k] = failed_record(r, str(err), "bad_annotation")
                    continue
                if not gt.any():
                    what = f"annotation {ids[0]!r}" if len(ids) == 1 else f"annotations {ids!r}"
                    records[k] = failed_record(r, f"{what} has an empty mask", "bad_annotation")
                    continue
                gts[key] = (gt, best_proposal(props, gt))
        todo.append((k, r))

    t1 = time.perf_counter()
    preds = predict_on_state(
        segmenter, state, [r["sentence"] for _, r in todo], top_k, guidance, options
    )
    per_expr = (time.perf_counter() - t1) / max(len(todo), 1)
    for (k, r), pred in zip(todo, preds, strict=True):
        if isinstance(pred, Exception):
            records[k] = failed_record(
                r, f"prediction failed: {type(pred).__name__}: {pred}", "prediction_failed"
            )
            continue
        gt, (up_idx, up_i, up_u) = gts[_gt_key(ann_id_list(r["ann_id"]))]
        try:
            rec = failed_record(r, "", "")
            rec["error"] = rec["error_kind"] = None
            pure_idx = pred.pure_index
            pure_mask = props[pure_idx] if pure_idx is not None else np.zeros_like(gt)
            pi, pu = intersection_union(pure_mask, gt)
            gi, gu = intersection_union(np.asarray(pred.mask, dtype=bool), gt)
            rec.update(
                parse=pred.parse.to_dict() if pred.parse is not None else None,
                num_proposals=int(pred.num_proposals),
                gt_area=int(np.count_nonzero(gt)),
                score=float(pred.score),
                found=bool(pred.found),
                no_target=not ann_id_list(r["ann_id"]),
                num_targets=len(getattr(pred, "targets", None) or ([0] if pred.found else [])),
                time_s=per_expr,
                image_time_s=image_time,
            )
            rec.update(_counts_fields("pure", pure_idx, pi, pu))
            rec.update(_counts_fields("guided", pred.index, gi, gu))
            rec.update(_counts_fields("upper", up_idx, up_i, up_u))
            rec.update(_prediction_dict(pred) or {})
            if calibration:
                from hybridgl.eval.sweep import sample_of

                key = record_key(rec) or ""
                rec["calibration"] = sample_of(pred, state, gt, key, rec["no_target"]).to_dict()
        except Exception as err:  # a malformed prediction must not stop the run
            rec = failed_record(
                r, f"scoring failed: {type(err).__name__}: {err}", "prediction_failed"
            )
        records[k] = rec
    return [records[k] for k in range(len(rows))]

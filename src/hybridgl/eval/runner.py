"""The evaluation loop: every image once, all its expressions at once, resumable JSONL.

Output folder::

    run.json            settings of the run (a resumed run must use the same ones)
    predictions.jsonl   one record per expression, appended and flushed as it is made
    report.json         metrics and counts (rewritten atomically at the end)
    report.md           the same as a Markdown table

The work is a list of units, one image with every expression (of every dataset and split
of the run) that uses it, run by :func:`hybridgl.jobs.engine.run_units` on the local or the
Ray engine; records are written by the one resumable writer of :mod:`hybridgl.jobs.records`
(same resume rule as ``batch``: an expression whose last record succeeded is skipped, an
incomplete last line is cut off, the last record of an expression counts).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.eval.metrics import (
    THRESHOLDS,
    best_proposal,
    intersection_union,
    iou_from_counts,
    metrics_table,
    summarize_records,
)
from hybridgl.eval.refer import DataError, EvalData, Expression, lookup_ann_mask
from hybridgl.images import DEFAULT_MAX_PIXELS
from hybridgl.jobs.engine import EngineOptions, Progress, run_units
from hybridgl.jobs.records import RecordLog, RecordWriter, read_records
from hybridgl.jobs.runfile import check_run_file
from hybridgl.jobs.units import UnitWorker, WorkUnit, encode_state, predict_on_state
from hybridgl.spec import ModelSpec

log = logging.getLogger("hybridgl.eval")

PREDICTIONS = "predictions.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

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
    "time_s",
    "image_time_s",
    "error",
    "error_kind",
)
# A successful record also carries every key of Prediction.to_dict() (the one record
# shape, flat; without "timings": time_s has the time), among them "index", the chosen
# proposal, which the guided_* counts are of.

#: Settings a resumed run must share with the run that wrote the folder.
#: (The model options are checked through the run's ModelSpec: jobs/runfile.py.)
RESUME_KEYS = ("format", "dataset", "split", "proposals", "top_k", "guidance")


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


def _row_of(data: EvalData, e: Expression) -> dict[str, Any]:
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
            for ann_id in [*ann_ids, e.ann_id]:
                if ann_id not in known and ann_id in data.annotations:
                    unit.data["anns"].append([ann_id, data.annotations[ann_id]])
                    known.add(ann_id)
            unit.rows.append(_row_of(data, e))
    return list(units.values())


@dataclass
class EvalTask:
    """What a worker does with one image of an evaluation (see :func:`evaluate_unit`)."""

    proposals: str = "sam"
    top_k: int = 3
    guidance: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def run(self, worker: UnitWorker, unit: WorkUnit) -> list[dict[str, Any]]:
        return evaluate_unit(
            worker, unit, self.proposals, self.top_k, self.guidance, max_pixels=self.max_pixels
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
) -> list[dict[str, Any]]:
    """Records for every expression of one image: one encoding, one ``predict_many``."""
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
        ann_id = r["ann_id"]
        if ann_id not in gts:
            try:
                gt = lookup_ann_mask(anns, ann_id, h, w)
            except DataError as err:
                records[k] = failed_record(r, str(err), "bad_annotation")
                continue
            if not gt.any():
                records[k] = failed_record(
                    r, f"annotation {ann_id!r} has an empty mask", "bad_annotation"
                )
                continue
            gts[ann_id] = (gt, best_proposal(props, gt))
        todo.append((k, r))

    t1 = time.perf_counter()
    preds = predict_on_state(segmenter, state, [r["sentence"] for _, r in todo], top_k, guidance)
    per_expr = (time.perf_counter() - t1) / max(len(todo), 1)
    for (k, r), pred in zip(todo, preds, strict=True):
        if isinstance(pred, Exception):
            records[k] = failed_record(
                r, f"prediction failed: {type(pred).__name__}: {pred}", "prediction_failed"
            )
            continue
        gt, (up_idx, up_i, up_u) = gts[r["ann_id"]]
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
                time_s=per_expr,
                image_time_s=image_time,
            )
            rec.update(_counts_fields("pure", pure_idx, pi, pu))
            rec.update(_counts_fields("guided", pred.index, gi, gu))
            rec.update(_counts_fields("upper", up_idx, up_i, up_u))
            rec.update(_prediction_dict(pred) or {})
        except Exception as err:  # a malformed prediction must not stop the run
            rec = failed_record(
                r, f"scoring failed: {type(err).__name__}: {err}", "prediction_failed"
            )
        records[k] = rec
    return [records[k] for k in range(len(rows))]


# --------------------------------------------------------------------------- report


def build_report(
    data: EvalData,
    selected: Sequence[Expression],
    records: Iterable[dict[str, Any]],
    settings: dict[str, Any],
    selection: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics and counts over the selected expressions' records."""
    by_id = {str(r["sent_id"]): r for r in records}
    recs = [by_id[str(e.sent_id)] for e in selected if str(e.sent_id) in by_id]
    failed = [r for r in recs if r.get("error")]
    kinds = Counter(r.get("error_kind") or "other" for r in failed)
    count_warning = None
    limited = selection.get("limit") is not None or selection.get("sample") is not None
    if data.expected_count is not None and not limited:
        n = len(data.expressions)
        if n != data.expected_count:
            count_warning = (
                f"{data.name} {data.split} has {n} expressions; the published split has "
                f"{data.expected_count}"
            )
    done = [r for r in recs if not r.get("error")]
    report: dict[str, Any] = {
        **settings,
        "selection": dict(selection),
        "counts": {
            "in_split": len(data.expressions),
            "selected": len(selected),
            "evaluated": len(recs),
            "done": len(done),
            "failed": len(failed),
            "pending": len(selected) - len(recs),
            "images": len({str(e.image_id) for e in selected}),
            "data_problems": len(data.problems),
        },
        "expected_count": data.expected_count,
        "count_warning": count_warning,
        "metrics": summarize_records(recs, THRESHOLDS),
        "errors_by_kind": dict(sorted(kinds.items())),
        "errors": [
            {"sent_id": r["sent_id"], "error_kind": r.get("error_kind"), "error": r["error"]}
            for r in failed[:20]
        ],
        "data_problems": list(data.problems[:50]),
        "mean_time_s": (
            sum(float(r.get("time_s") or 0.0) for r in done) / len(done) if done else None
        ),
        "sources": dict(data.sources),
    }
    if extra:
        report.update(extra)
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (percentages; definitions in docs/EVALUATION.md)."""
    c = report["counts"]
    model = report.get("model") or {}
    lines = [
        f"# Evaluation: {report['dataset']} {report['split']}",
        "",
        f"- data: {report['format']} ({', '.join(f'{k}: {v}' for k, v in report['sources'].items())})",
        f"- proposals: {report['proposals']}; top_k: {report['top_k']}; "
        f"guidance: {report['guidance']}",
        "- model: " + (", ".join(f"{k}={v}" for k, v in model.items()) or "-"),
        f"- expressions: {c['selected']} selected of {c['in_split']} in the split; "
        f"{c['done']} done, {c['failed']} failed, {c['pending']} pending; "
        f"{c['images']} images",
        "",
        metrics_table(report["metrics"]),
        "",
        "mIoU, oIoU and P@t in percent over the done expressions; IoU = 0 when the union "
        "is empty; P@t counts IoU >= t.",
    ]
    if report.get("count_warning"):
        lines += ["", f"**Warning:** {report['count_warning']}."]
    if report["errors_by_kind"]:
        lines += ["", "## Failed expressions", ""]
        lines += [f"- {k}: {n}" for k, n in report["errors_by_kind"].items()]
        lines += [""] + [f"  - sent_id {e['sent_id']}: {e['error']}" for e in report["errors"]]
    if report["data_problems"]:
        lines += ["", "## Data problems", ""] + [f"- {p}" for p in report["data_problems"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- run


def _model_settings(segmenter: Any) -> dict[str, Any]:
    info = dict(getattr(segmenter, "model_info", {}) or {})
    info.pop("device", None)
    return info


def _write_text(path: Path, text: str) -> None:
    from hybridgl.fileio import atomic_write_text

    atomic_write_text(path, text)


def _expr_key(data: EvalData, e: Expression) -> str:
    return f"{data.name}\t{data.split}\t{e.sent_id}"


class EvalSink:
    """Driver side of an evaluation: appends each image's records, one fsync per image."""

    def __init__(self, writer: RecordWriter, progress: Progress | None, log_: RecordLog) -> None:
        self.writer = writer
        self.progress = progress
        self.log = log_
        self.seen: set[str] = set()
        self.images = 0
        self.done = 0
        self.failed = 0
        self.callbacks: list[Callable[[int, int, int], None]] = []

    def write(self, records: list[dict[str, Any]]) -> int:
        failed = 0
        for rec in records:
            self.writer.write(rec)
            key = record_key(rec)
            if key is not None:
                self.log.last.pop(key, None)
                self.log.last[key] = rec
            if rec.get("error"):
                failed += 1
        self.writer.commit()
        self.failed += failed
        self.done += len(records) - failed
        if self.progress is not None:
            self.progress.rows(len(records), failed)
        return failed

    def __call__(self, unit: WorkUnit, records: list[dict[str, Any]]) -> None:
        if unit.key in self.seen:  # a retried unit delivered twice: write it once
            return
        self.seen.add(unit.key)
        self.write(records)
        self.images += 1
        if self.progress is not None:
            self.progress.unit_done()
        for cb in self.callbacks:
            cb(self.images, self.done, self.failed)


def run_evaluation(
    data: EvalData | Sequence[EvalData],
    segmenter: Any = None,
    out_dir: str | Path = "eval-runs/run",
    *,
    proposals: str = "sam",
    top_k: int = 3,
    guidance: bool = True,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    retry_failed: bool = False,
    progress: bool | Callable[[int, int, int, int], None] | None = None,
    spec: ModelSpec | None = None,
    factory: Callable[[], Any] | None = None,
    engine: EngineOptions | None = None,
    model_info: dict[str, Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Evaluate (or resume evaluating) one or several splits and write the outputs.

    Args:
        data: one split from :func:`~hybridgl.eval.refer.load_refer` or ``load_generic``,
            or several (a suite: every image is encoded once for all splits using it).
        segmenter: a ready :class:`hybridgl.Segmenter` for the local engine (or use
            ``factory`` / ``spec`` to build one only when an image needs it).
        out_dir: output folder (created; an existing one is resumed).
        proposals: ``"sam"`` (the method) or ``"gt"`` (every COCO mask of the image
            replaces SAM's proposals).
        top_k, guidance: passed to ``predict_many``.
        limit, sample, seed: subset selection per split (see :func:`select_expressions`).
        retry_failed: evaluate again the expressions recorded as failed.
        progress: True for the tqdm bar on stderr, or a callback called after each image
            with ``(images done, images to do, expressions done, expressions failed)``.
        spec, factory, engine: how and where workers build their segmenter and run
            (:func:`hybridgl.jobs.engine.run_units`); default: this process.
        model_info: the model settings recorded in run.json (default: the spec's, else
            the segmenter's); a resume with other model options is refused naming them.
        max_pixels: images above this many pixels are failed records (``bad_image``).

    Returns:
        The report (also written as report.json and report.md).

    Raises:
        RunConflictError: ``out_dir`` holds a run with other settings.
    """
    if proposals not in ("sam", "gt"):
        raise ValueError(f"proposals must be 'sam' or 'gt', got {proposals!r}")
    parts_data = [data] if isinstance(data, EvalData) else list(data)
    if not parts_data:
        raise ValueError("no data to evaluate")
    suite = len(parts_data) > 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if segmenter is not None and factory is None:
        factory = lambda: segmenter  # noqa: E731
    if spec is None:
        spec = getattr(segmenter, "spec", None)
    if model_info is None:
        if spec is not None:
            model_info = spec.model_info()
        else:
            model_info = _model_settings(segmenter) if segmenter is not None else {}
    settings = {
        "format": parts_data[0].format,
        "dataset": ",".join(d.name for d in parts_data) if suite else parts_data[0].name,
        "split": ",".join(f"{d.name}/{d.split}" for d in parts_data)
        if suite
        else parts_data[0].split,
        "proposals": proposals,
        "top_k": int(top_k),
        "guidance": bool(guidance),
        "model": dict(model_info),
    }
    check_run_file(out, {k: settings[k] for k in RESUME_KEYS}, spec, model_info)
    selection = {"limit": limit, "sample": sample, "seed": seed if sample is not None else None}
    parts = []
    for d in parts_data:
        selected = select_expressions(d.expressions, limit, sample, seed)
        if d.expected_count is not None and limit is None and sample is None:
            if len(d.expressions) != d.expected_count:
                log.warning(
                    "%s %s has %d expressions; the published split has %d (METHOD.md)",
                    d.name,
                    d.split,
                    len(d.expressions),
                    d.expected_count,
                )
        for p in d.problems:
            log.warning("data problem: %s", p)
        parts.append((d, selected))

    pred_path = out / PREDICTIONS
    log_ = read_records(pred_path, key=record_key)
    done_ids = log_.done_ids(retry_failed=retry_failed)
    pending = [(d, [e for e in sel if _expr_key(d, e) not in done_ids]) for d, sel in parts]
    n_selected = sum(len(sel) for _, sel in parts)
    n_pending = sum(len(p) for _, p in pending)
    if log_.last:
        log.info(
            "resuming: %d of %d selected expressions already in %s",
            n_selected - n_pending,
            n_selected,
            pred_path,
        )

    t_start = time.perf_counter()
    units = make_units([(d, [e for e in p if not e.error]) for d, p in pending], proposals)
    n_rows = sum(len(u.rows) for u in units)
    bar = None
    if progress is True:
        bar = Progress(n_pending, len(units), desc="evaluate", disable=False)
    facts: dict[str, Any] = {}
    with RecordWriter(pred_path) as writer:
        sink = EvalSink(writer, bar, log_)
        if callable(progress):
            cb = progress
            sink.callbacks.append(lambda i, dn, fl: cb(i, len(units), dn, fl))
        try:
            for d, todo in pending:
                bad = [
                    failed_record(_row_of(d, e), e.error, e.error_kind or "bad_record")
                    for e in todo
                    if e.error
                ]
                if bad:
                    sink.write(bad)
            facts = run_units(
                units,
                EvalTask(
                    proposals=proposals,
                    top_k=int(top_k),
                    guidance=bool(guidance),
                    max_pixels=max_pixels,
                ),
                sink,
                spec=(spec or ModelSpec()).with_driver_env(),
                options=engine,
                factory=factory,
            )
        finally:
            if bar is not None:
                bar.close()
    wall = time.perf_counter() - t_start

    current = log_.current()
    this_run = {
        "images": sink.images,
        "images_encoded": sink.images,
        "expressions": sink.done + sink.failed,
        "expressions_on_images": n_rows,
        "failed": sink.failed,
        "wall_s": wall,
        "engine": facts.get("engine", (engine.engine if engine else "local")),
        "workers": facts.get("workers"),
        "built": facts.get("built", []),
    }
    files = {
        "predictions": str(pred_path),
        "report_json": str(out / REPORT_JSON),
        "report_md": str(out / REPORT_MD),
    }
    if not suite:
        d, selected = parts[0]
        report = build_report(
            d, selected, current, settings, selection, extra={"this_run": this_run, "files": files}
        )
        md = report_markdown(report)
    else:
        report = build_suite_report(parts, current, settings, selection, this_run, files)
        md = suite_markdown(report)
    _write_text(out / REPORT_JSON, json.dumps(report, indent=2, default=str) + "\n")
    _write_text(out / REPORT_MD, md)
    return report


#: Published figures to compare with (METHOD.md "Evaluation protocol"): CLIP ViT-B/16,
#: SAM ViT-H. Only RefCOCOg val is published there; the other splits have no figure in
#: this repository's documents.
PUBLISHED: dict[tuple[str, str], dict[str, dict[str, float]]] = {
    ("refcocog", "val"): {
        "HybridGL (paper)": {"mIoU": 51.3},
        "released code, reproduced, pure": {"mIoU": 46.66, "oIoU": 37.14},
        "released code, reproduced, guided": {"mIoU": 46.04, "oIoU": 35.48},
    },
}

#: Splits of the paper's table, in its column order.
PAPER_SPLITS: tuple[tuple[str, str], ...] = (
    ("refcoco", "val"),
    ("refcoco", "testA"),
    ("refcoco", "testB"),
    ("refcoco+", "val"),
    ("refcoco+", "testA"),
    ("refcoco+", "testB"),
    ("refcocog", "val"),
    ("refcocog", "test"),
)


def build_suite_report(
    parts: Sequence[tuple[EvalData, Sequence[Expression]]],
    records: Sequence[dict[str, Any]],
    settings: dict[str, Any],
    selection: dict[str, Any],
    this_run: dict[str, Any],
    files: dict[str, Any],
) -> dict[str, Any]:
    """One report per split plus the paper-style table of a multi-split run."""
    splits: dict[str, Any] = {}
    for d, selected in parts:
        mine = [r for r in records if r.get("dataset") == d.name and r.get("split") == d.split]
        rep = build_report(
            d, selected, mine, {**settings, "dataset": d.name, "split": d.split}, selection
        )
        splits[f"{d.name}/{d.split}"] = rep
    images = len({str(d.image_path(e.image_id)) for d, selected in parts for e in selected})
    comparison = []
    for name, rep in splits.items():
        ds, sp = name.split("/", 1)
        guided = rep["metrics"].get("guided") or {}
        pure = rep["metrics"].get("pure") or {}
        for source, figs in PUBLISHED.get((ds, sp), {}).items():
            ours = pure if source.endswith("pure") else guided
            for metric, value in figs.items():
                value_ours = ours.get(metric)
                comparison.append(
                    {
                        "split": name,
                        "published": source,
                        "metric": metric,
                        "published_value": value,
                        "ours": value_ours,
                        "difference": (value_ours - value)
                        if isinstance(value_ours, (int, float))
                        else None,
                    }
                )
    return {
        **settings,
        "selection": dict(selection),
        "suite": True,
        "splits": splits,
        "counts": {
            "selected": sum(r["counts"]["selected"] for r in splits.values()),
            "done": sum(r["counts"]["done"] for r in splits.values()),
            "failed": sum(r["counts"]["failed"] for r in splits.values()),
            "pending": sum(r["counts"]["pending"] for r in splits.values()),
            "images": images,
            "expressions_per_image": None,
        },
        "data_problems": [p for r in splits.values() for p in r["data_problems"]],
        "comparison": comparison,
        "this_run": this_run,
        "files": files,
    }


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def suite_markdown(report: dict[str, Any]) -> str:
    """The paper's table layout: one column per split, mIoU / oIoU rows, published beside."""
    splits = report["splits"]
    names = [f"{d}/{s}" for d, s in PAPER_SPLITS if f"{d}/{s}" in splits]
    names += [n for n in splits if n not in names]
    c = report["counts"]
    tr = report["this_run"]
    lines = [
        f"# Evaluation suite: {len(names)} splits",
        "",
        f"- proposals: {report['proposals']}; top_k: {report['top_k']}; "
        f"guidance: {report['guidance']}",
        "- model: "
        + (", ".join(f"{k}={v}" for k, v in (report.get("model") or {}).items()) or "-"),
        f"- expressions: {c['selected']} selected; {c['done']} done, {c['failed']} failed, "
        f"{c['pending']} pending; {c['images']} distinct images",
        f"- this run: {tr['images_encoded']} images encoded for {tr['expressions']} expressions "
        f"({tr['engine']} engine), {tr['wall_s']:.1f} s",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for kind, label in (("pure", "pure (CLIP only)"), ("guided", "guided (HybridGL)"),
                        ("upper", "upper bound")):  # fmt: skip
        for metric in ("mIoU", "oIoU"):
            cells = [_fmt((splits[n]["metrics"].get(kind) or {}).get(metric)) for n in names]
            lines.append(f"| {label} {metric} | " + " | ".join(cells) + " |")
    sources = sorted({src for figs in PUBLISHED.values() for src in figs})
    for src in sources:
        for metric in ("mIoU", "oIoU"):
            cells = []
            for n in names:
                ds, sp = n.split("/", 1)
                cells.append(_fmt(PUBLISHED.get((ds, sp), {}).get(src, {}).get(metric)))
            if any(cell != "-" for cell in cells):
                lines.append(f"| {src} {metric} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Published figures: METHOD.md (CLIP ViT-B/16, SAM ViT-H); only RefCOCOg val has one "
        "there, the other splits have no published figure in this repository (`-`).",
    ]
    if report["comparison"]:
        lines += ["", "| split | published | metric | published | ours | difference |",
                  "|---|---|---|---:|---:|---:|"]  # fmt: skip
        for row in report["comparison"]:
            lines.append(
                f"| {row['split']} | {row['published']} | {row['metric']} | "
                f"{_fmt(row['published_value'])} | {_fmt(row['ours'])} | {_fmt(row['difference'])} |"
            )
    for n in names:
        rep = splits[n]
        if rep.get("count_warning"):
            lines += ["", f"**Warning:** {rep['count_warning']}."]
    if report["data_problems"]:
        lines += ["", "## Data problems", ""] + [f"- {p}" for p in report["data_problems"][:50]]
    return "\n".join(lines) + "\n"

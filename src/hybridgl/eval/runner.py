"""The evaluation loop: every image once, all its expressions at once, resumable JSONL.

Output folder::

    run.json            settings of the run (a resumed run must use the same ones)
    predictions.jsonl   one record per expression, appended and flushed as it is made
    report.json         metrics and counts (rewritten atomically at the end)
    report.md           the same as a Markdown table

A rerun with the same folder skips the expressions whose ``sent_id`` is already in
predictions.jsonl; an incomplete last line (an interrupted write) is dropped first.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
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
from hybridgl.eval.refer import DataError, EvalData, Expression

log = logging.getLogger("hybridgl.eval")

PREDICTIONS = "predictions.jsonl"
RUN_FILE = "run.json"
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
    "guided_index",
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

#: Settings a resumed run must share with the run that wrote the folder.
RESUME_KEYS = ("format", "dataset", "split", "proposals", "top_k", "guidance", "model")


class RunConflictError(DataError):
    """The output folder holds results of a run with other settings."""


# --------------------------------------------------------------------------- files


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_records(path: Path, drop_failed: bool = False) -> list[dict[str, Any]]:
    """Read predictions.jsonl, repairing it first when needed.

    Lines that are not complete JSON objects (an interrupted write leaves a truncated
    last line) are dropped, and so are failed records when ``drop_failed``; the file is
    then rewritten atomically so that appending continues from a clean state.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    records: list[dict[str, Any]] = []
    bad = 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            bad += 1
            continue
        if isinstance(rec, dict) and "sent_id" in rec:
            records.append(rec)
        else:
            bad += 1
    dropped_failed = 0
    if drop_failed:
        kept = [r for r in records if not r.get("error")]
        dropped_failed = len(records) - len(kept)
        records = kept
    if bad or dropped_failed or (raw and not raw.endswith(b"\n")):
        if bad:
            log.warning("%s: dropped %d incomplete or invalid line(s)", path, bad)
        if dropped_failed:
            log.info("%s: %d failed record(s) will be retried", path, dropped_failed)
        atomic_write_text(path, "".join(_dumps(r) + "\n" for r in records))
    return records


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


def group_by_image(expressions: Iterable[Expression]) -> list[tuple[Any, list[Expression]]]:
    """Expressions grouped by image, groups and members in first-appearance order."""
    groups: dict[Any, list[Expression]] = {}
    for e in expressions:
        groups.setdefault(e.image_id, []).append(e)
    return list(groups.items())


# --------------------------------------------------------------------------- records


def _base_record(data: EvalData, e: Expression) -> dict[str, Any]:
    rec: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    rec.update(
        dataset=data.name,
        split=data.split,
        image_id=e.image_id,
        ref_id=e.ref_id,
        ann_id=e.ann_id,
        sent_id=e.sent_id,
        sentence=e.sentence,
    )
    return rec


def failed_record(data: EvalData, e: Expression, error: str, kind: str) -> dict[str, Any]:
    rec = _base_record(data, e)
    rec["error"] = error
    rec["error_kind"] = kind
    return rec


def _counts_fields(prefix: str, index: int | None, i: int, u: int) -> dict[str, Any]:
    return {
        f"{prefix}_index": index,
        f"{prefix}_iou": iou_from_counts(i, u),
        f"{prefix}_i": int(i),
        f"{prefix}_u": int(u),
    }


def _gt_proposals(data: EvalData, image_id: Any, height: int, width: int) -> np.ndarray:
    masks = []
    for ann_id in data.image_ann_ids(image_id):
        try:
            m = data.ann_mask(ann_id, height, width)
        except DataError as e:
            log.warning("image %s: ground-truth proposal skipped: %s", image_id, e)
            continue
        if m.any():
            masks.append(m)
    if not masks:
        return np.zeros((0, height, width), dtype=bool)
    return np.stack(masks)


class _ImageFailure(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _prepare_image(
    data: EvalData, image_id: Any, segmenter: Any, proposals: str
) -> tuple[Any, np.ndarray]:
    from hybridgl.errors import ImageError
    from hybridgl.images import load_image

    path = data.image_path(image_id)
    if not path.is_file():
        raise _ImageFailure(f"missing image: {path}", "missing_image")
    try:
        image = load_image(path)
    except ImageError as e:
        raise _ImageFailure(f"unreadable image {path}: {e}", "bad_image") from None
    h, w = image.shape[:2]
    size = data.image_size(image_id)
    if size is not None and size != (h, w):
        raise _ImageFailure(
            f"image {path} is {h}x{w} but instances.json says {size[0]}x{size[1]}",
            "size_mismatch",
        )
    masks = _gt_proposals(data, image_id, h, w) if proposals == "gt" else None
    try:
        state = segmenter.set_image(image, proposals=masks)
    except Exception as e:
        raise _ImageFailure(
            f"set_image failed on {path}: {type(e).__name__}: {e}", "prediction_failed"
        ) from None
    masks = np.asarray(state.masks, dtype=bool)
    if masks.size == 0:
        masks = np.zeros((0, h, w), dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
        raise _ImageFailure(
            f"proposals of {path} have shape {masks.shape}, expected (N, {h}, {w})",
            "prediction_failed",
        )
    return state, masks


def _predict_all(segmenter: Any, sentences: list[str], top_k: int, guidance: bool) -> list[Any]:
    """predict_many, falling back to one call per sentence to isolate a failure."""
    try:
        return list(segmenter.predict_many(sentences, top_k=top_k, guidance=guidance))
    except Exception as e:
        log.debug("predict_many failed (%s); retrying one by one", e)
    out: list[Any] = []
    for s in sentences:
        try:
            out.append(segmenter.predict(s, top_k=top_k, guidance=guidance))
        except Exception as e:
            out.append(e)
    return out


def evaluate_image(
    data: EvalData,
    image_id: Any,
    exprs: list[Expression],
    segmenter: Any,
    proposals: str = "sam",
    top_k: int = 3,
    guidance: bool = True,
) -> list[dict[str, Any]]:
    """Records for every expression of one image (one ``set_image``, one ``predict_many``)."""
    t0 = time.perf_counter()
    try:
        state, masks = _prepare_image(data, image_id, segmenter, proposals)
    except _ImageFailure as f:
        return [failed_record(data, e, str(f), f.kind) for e in exprs]
    image_time = time.perf_counter() - t0
    h, w = masks.shape[1:]

    records: dict[int, dict[str, Any]] = {}
    gts: dict[Any, tuple[np.ndarray, tuple[int | None, int, int]]] = {}
    todo: list[tuple[int, Expression]] = []
    for k, e in enumerate(exprs):
        if e.ann_id not in gts:
            try:
                gt = data.ann_mask(e.ann_id, h, w)
            except DataError as err:
                records[k] = failed_record(data, e, str(err), "bad_annotation")
                continue
            if not gt.any():
                records[k] = failed_record(
                    data, e, f"annotation {e.ann_id!r} has an empty mask", "bad_annotation"
                )
                continue
            gts[e.ann_id] = (gt, best_proposal(masks, gt))
        todo.append((k, e))

    t1 = time.perf_counter()
    preds = _predict_all(segmenter, [e.sentence for _, e in todo], top_k, guidance)
    per_expr = (time.perf_counter() - t1) / max(len(todo), 1)
    for (k, e), pred in zip(todo, preds, strict=True):
        if isinstance(pred, Exception):
            records[k] = failed_record(
                data, e, f"prediction failed: {type(pred).__name__}: {pred}", "prediction_failed"
            )
            continue
        gt, (up_idx, up_i, up_u) = gts[e.ann_id]
        try:
            rec = _base_record(data, e)
            pure_idx = pred.pure_index
            pure_mask = masks[pure_idx] if pure_idx is not None else np.zeros_like(gt)
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
        except Exception as err:  # a malformed prediction must not stop the run
            rec = failed_record(
                data, e, f"scoring failed: {type(err).__name__}: {err}", "prediction_failed"
            )
        records[k] = rec
    return [records[k] for k in range(len(exprs))]


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


def _check_run_file(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / RUN_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunConflictError(
                f"{path} is unreadable ({e}); delete it or use another --out"
            ) from None
        diff = [
            k
            for k in RESUME_KEYS
            if json.loads(_dumps(old.get(k))) != json.loads(_dumps(settings.get(k)))
        ]
        if diff:
            details = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now" for k in diff)
            raise RunConflictError(
                f"{out_dir} holds a run with other settings ({details}); "
                "use another --out or delete that folder"
            )
    else:
        atomic_write_text(path, json.dumps(settings, indent=2, default=_json_default) + "\n")


def run_evaluation(
    data: EvalData,
    segmenter: Any,
    out_dir: str | Path,
    *,
    proposals: str = "sam",
    top_k: int = 3,
    guidance: bool = True,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    retry_failed: bool = False,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate (or resume evaluating) a split and write the outputs to ``out_dir``.

    Args:
        data: from :func:`~hybridgl.eval.refer.load_refer` or ``load_generic``.
        segmenter: a :class:`hybridgl.Segmenter` (anything with ``set_image``,
            ``predict_many``, ``predict`` and ``model_info``).
        out_dir: output folder (created; an existing one is resumed).
        proposals: ``"sam"`` (the method) or ``"gt"`` (every COCO mask of the image
            replaces SAM's proposals).
        top_k, guidance: passed to ``predict_many``.
        limit, sample, seed: subset selection (see :func:`select_expressions`).
        retry_failed: evaluate again the expressions recorded as failed.
        progress: called after each image with ``(images done, images to do,
            expressions done, expressions failed)`` of this call.

    Returns:
        The report (also written as report.json and report.md).

    Raises:
        RunConflictError: ``out_dir`` holds a run with other settings.
    """
    if proposals not in ("sam", "gt"):
        raise ValueError(f"proposals must be 'sam' or 'gt', got {proposals!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "format": data.format,
        "dataset": data.name,
        "split": data.split,
        "proposals": proposals,
        "top_k": int(top_k),
        "guidance": bool(guidance),
        "model": _model_settings(segmenter),
    }
    _check_run_file(out, settings)
    selection = {"limit": limit, "sample": sample, "seed": seed if sample is not None else None}
    selected = select_expressions(data.expressions, limit, sample, seed)
    if data.expected_count is not None and limit is None and sample is None:
        if len(data.expressions) != data.expected_count:
            log.warning(
                "%s %s has %d expressions; the published split has %d (METHOD.md)",
                data.name,
                data.split,
                len(data.expressions),
                data.expected_count,
            )
    for p in data.problems:
        log.warning("data problem: %s", p)

    pred_path = out / PREDICTIONS
    records = read_records(pred_path, drop_failed=retry_failed)
    done_ids = {str(r["sent_id"]) for r in records}
    pending = [e for e in selected if str(e.sent_id) not in done_ids]
    if done_ids:
        log.info(
            "resuming: %d of %d selected expressions already in %s",
            len(selected) - len(pending),
            len(selected),
            pred_path,
        )

    t_start = time.perf_counter()
    n_images = n_done = n_failed = 0
    groups = group_by_image(e for e in pending if not e.error)
    with open(pred_path, "a", encoding="utf-8") as f:

        def write(rec: dict[str, Any]) -> None:
            nonlocal n_done, n_failed
            f.write(_dumps(rec) + "\n")
            f.flush()
            records.append(rec)
            if rec.get("error"):
                n_failed += 1
            else:
                n_done += 1

        for e in pending:
            if e.error:
                write(failed_record(data, e, e.error, e.error_kind or "bad_record"))
        for image_id, exprs in groups:
            try:
                recs = evaluate_image(data, image_id, exprs, segmenter, proposals, top_k, guidance)
            except Exception as err:  # never stop the whole run on one image
                log.exception("image %s failed", image_id)
                recs = [
                    failed_record(
                        data, e, f"internal error: {type(err).__name__}: {err}", "internal"
                    )
                    for e in exprs
                ]
            for rec in recs:
                write(rec)
            n_images += 1
            log.debug("[%d/%d images] %d done, %d failed", n_images, len(groups), n_done, n_failed)
            if progress is not None:
                progress(n_images, len(groups), n_done, n_failed)
        f.flush()
        os.fsync(f.fileno())

    report = build_report(
        data,
        selected,
        records,
        settings,
        selection,
        extra={
            "this_run": {
                "images": n_images,
                "expressions": n_done + n_failed,
                "failed": n_failed,
                "wall_s": time.perf_counter() - t_start,
            },
            "files": {
                "predictions": str(pred_path),
                "report_json": str(out / REPORT_JSON),
                "report_md": str(out / REPORT_MD),
            },
        },
    )
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2, default=_json_default) + "\n")
    atomic_write_text(out / REPORT_MD, report_markdown(report))
    return report

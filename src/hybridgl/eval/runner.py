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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hybridgl.eval.refer import EvalData, Expression
from hybridgl.eval.report import (
    build_report,
    build_suite_report,
    report_markdown,
    suite_markdown,
)
from hybridgl.eval.task import (
    EvalTask,
    failed_record,
    make_units,
    record_key,
    row_of,
    select_expressions,
)
from hybridgl.images import DEFAULT_MAX_PIXELS
from hybridgl.jobs.engine import EngineOptions, Progress, run_units
from hybridgl.jobs.records import RecordLog, RecordWriter, read_records
from hybridgl.jobs.runfile import check_run_file
from hybridgl.jobs.units import WorkUnit
from hybridgl.spec import ModelSpec

__all__ = ["RESUME_KEYS", "EvalSink", "run_evaluation"]

log = logging.getLogger("hybridgl.eval")

PREDICTIONS = "predictions.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

#: Settings a resumed run must share with the run that wrote the folder.
#: (The model options are checked through the run's ModelSpec: jobs/runfile.py; targets and
#: thresholds are None for the default, as in run folders written before they existed.)
RESUME_KEYS = (
    "format",
    "dataset",
    "split",
    "proposals",
    "top_k",
    "guidance",
    "targets",
    "thresholds",
    "calibration",
)


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
    targets: str = "one",
    thresholds: Any = None,
    calibration: bool = False,
) -> dict[str, Any]:
    """Evaluate (or resume evaluating) one or several splits and write the outputs.

    Args:
        data: one split from :func:`~hybridgl.eval.refer.load_refer` or ``load_generic``
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
        targets, thresholds: zero, one or many targets (:mod:`hybridgl.targets`); RefCOCO
            evaluation keeps ``"one"`` (the method as published), gRefCOCO and PhraseCut
            runs use ``"auto"`` or ``"many"``. Recorded in run.json (None: the default).
        calibration: records carry the sample ``hybridgl calibrate`` sweeps
            (:mod:`hybridgl.eval.sweep`); recorded in run.json (None when off).

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
    from hybridgl.targets import check_mode, load_thresholds

    check_mode(targets)
    rules = load_thresholds(thresholds).to_dict() if thresholds is not None else None
    settings["targets"] = None if targets == "one" else targets
    settings["thresholds"] = rules
    settings["calibration"] = True if calibration else None
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
                    failed_record(row_of(d, e), e.error, e.error_kind or "bad_record")
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
                    targets=targets,
                    thresholds=rules,
                    calibration=calibration,
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

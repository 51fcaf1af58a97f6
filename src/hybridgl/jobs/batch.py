"""The batch job: many (image, expression) rows, grouped by image, resumable.

The job behind ``hybridgl batch`` (the face in :mod:`hybridgl.cli.batch` only parses
arguments): reading the work list (JSONL, CSV or a folder), one work unit per image,
:class:`BatchTask` on a worker (local or Ray), :class:`BatchSink` in the driver (mask PNGs,
overlays, the one resumable ``results.jsonl``), the run file that refuses a resume with
other model options, and the COCO results file. Nothing here imports the CLI or server.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridgl.errors import ExpressionError, InputError, UsageError, error_record_fields
from hybridgl.images import DEFAULT_MAX_PIXELS
from hybridgl.jobs.batch_rows import BadRow, Row, read_rows
from hybridgl.jobs.engine import EngineOptions, Progress, run_units
from hybridgl.jobs.records import RecordWriter, read_records
from hybridgl.jobs.runfile import check_run_file
from hybridgl.jobs.units import UnitWorker, WorkUnit, encode_state, predict_on_state
from hybridgl.spec import ModelSpec

RESULTS = "results.jsonl"
COCO_RESULTS = "results.coco.json"
MASKS = "masks"
OVERLAYS = "overlays"


@dataclass
class Counts:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failed_ids: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- output


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(row_id: str) -> str:
    """A file or folder name for an id: the id when it is a safe name, else a sanitised
    prefix plus a hash of the id (distinct ids never share a name)."""
    safe = _SAFE.sub("_", row_id).strip("._")
    if safe == row_id and 0 < len(safe) <= 100:
        return safe
    digest = hashlib.sha1(row_id.encode("utf-8")).hexdigest()[:12]
    return f"{safe[:80]}-{digest}" if safe else digest


def mask_filename(row_id: str) -> str:
    """A file name for a row's mask (:func:`safe_name` of its id)."""
    return f"{safe_name(row_id)}.png"


# --------------------------------------------------------------------------- run


def _error_record(
    row: Row | BadRow | dict[str, Any], error: BaseException | str, kind: str | None = None
) -> dict[str, Any]:
    """The record of a failed row: its id, line, image and expression, ``error`` and
    ``error_kind`` (:func:`hybridgl.errors.error_record_fields`)."""
    if not isinstance(row, dict):
        row = {"id": row.id, "line": row.line, "image": row.image, "expression": row.expression}
    rec: dict[str, Any] = {"id": row["id"], "line": row["line"]}
    if row.get("image") is not None:
        rec["image"] = row["image"]
    if row.get("expression") is not None:
        rec["expression"] = row["expression"]
    rec.update(error_record_fields(error, kind))
    return rec


@dataclass
class BatchTask:
    """What a worker does with one image of a batch: encode it once, answer its rows.

    Returns the records without the file names; the driver writes the mask PNGs
    (and overlays) from the records' RLE, so workers need no access to the output folder.
    """

    top_k: int = 3
    guidance: bool = True
    polygons: bool = True
    max_pixels: int | None = None
    caller_proposals_only: bool = False  # --sam none
    targets: str = "one"  # the run's target mode; a row's own "targets" field wins
    thresholds: dict[str, Any] | None = None  # TargetRules.to_dict() (plain, for Ray)

    def run(self, worker: UnitWorker, unit: WorkUnit) -> list[dict[str, Any]]:
        from hybridgl.images import load_image
        from hybridgl.proposal_files import load_proposals_file

        try:
            image = load_image(unit.data["image_path"], max_pixels=self.max_pixels)
        except Exception as e:  # noqa: BLE001 - recorded per row, the run goes on
            return self.failed(unit, e)
        props = unit.data.get("proposals")
        try:
            if not props and self.caller_proposals_only:
                raise InputError("no proposals for this row, and --sam none has no model")
            proposals = load_proposals_file(props, *image.shape[:2]) if props else None
        except Exception as e:  # noqa: BLE001
            return [_error_record(r, e, "bad_proposals") for r in unit.rows]
        seg = worker.segmenter  # missing weights end the run (exit 4)
        preds = self.predict(seg, encode_state(seg, image, proposals, self.max_pixels), unit.rows)
        out = []
        for row, pred in zip(unit.rows, preds, strict=True):
            if isinstance(pred, BaseException):
                kind = "bad_expression" if isinstance(pred, ExpressionError) else None
                out.append(_error_record(row, pred, kind or "prediction_failed"))
                continue
            try:
                rec = pred.to_dict(polygons=self.polygons)
            except Exception as e:  # noqa: BLE001
                out.append(_error_record(row, e, "internal"))
                continue
            rec["expression"] = row["expression"]  # as written in the input
            head = {"id": row["id"], "line": row["line"], "image": row["image"]}
            if "image_id" in row:
                head["image_id"] = row["image_id"]
            out.append({**head, **rec})
        return out

    def predict(self, seg: Any, state: Any, rows: list[dict[str, Any]]) -> list[Any]:
        """Every row's prediction on the image's state, one ``predict_many`` per target
        mode (a row's ``targets`` field, else the run's); ``"one"`` calls it as before the
        option existed (no target keywords)."""
        from hybridgl.targets import target_kwargs

        by_mode: dict[str, list[int]] = {}
        for k, row in enumerate(rows):
            by_mode.setdefault(row.get("targets") or self.targets, []).append(k)
        preds: list[Any] = [None] * len(rows)
        for mode, ks in by_mode.items():
            options = target_kwargs(mode, self.thresholds if mode != "one" else None)
            got = predict_on_state(
                seg, state, [rows[k]["expression"] for k in ks], self.top_k, self.guidance, options
            )
            for k, pred in zip(ks, got, strict=True):
                preds[k] = pred
        return preds

    def failed(self, unit: WorkUnit, error: BaseException) -> list[dict[str, Any]]:
        return [_error_record(r, error) for r in unit.rows]


def make_units(rows: list[Row]) -> list[WorkUnit]:
    """One unit per (image, proposals file), in the order images first appear."""
    groups: dict[tuple[str, str], WorkUnit] = {}
    for r in rows:
        unit = groups.get(r.group_key)
        if unit is None:
            data = {"image_path": str(r.image_path)}
            if r.proposals is not None:
                data["proposals"] = str(r.proposals)
            unit = groups[r.group_key] = WorkUnit(key="\t".join(r.group_key), rows=[], data=data)
        row: dict[str, Any] = {
            "id": r.id,
            "line": r.line,
            "image": r.image,
            "expression": r.expression,
        }
        if r.image_id is not None:
            row["image_id"] = r.image_id
        if r.targets is not None:
            row["targets"] = r.targets
        unit.rows.append(row)
    return list(groups.values())


class BatchSink:
    """The driver side of a batch: mask PNGs, overlays, then the records (one fsync a unit)."""

    def __init__(
        self,
        out_dir: Path,
        writer: RecordWriter,
        counts: Counts,
        progress: Progress,
        overlays: bool,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.out_dir = out_dir
        self.max_pixels = max_pixels  # the run's --max-pixels, for the overlay reload
        self.writer = writer
        self.counts = counts
        self.progress = progress
        self.overlays = overlays
        self.seen: set[str] = set()

    def fail(self, rec: dict[str, Any]) -> None:
        self.writer.write(rec)
        self.counts.failed += 1
        self.counts.failed_ids.append(str(rec["id"]))
        self.progress.message(f"hybridgl: failed {rec['id']}: {rec['error']}")

    def __call__(self, unit: WorkUnit, records: list[dict[str, Any]]) -> None:
        from hybridgl.masks import rle_to_mask, save_mask_png

        if unit.key in self.seen:  # a retried unit delivered twice: write it once
            return
        self.seen.add(unit.key)
        failed = 0
        image = None
        for rec in records:
            if rec.get("error"):
                self.fail(rec)
                failed += 1
                continue
            mask = rle_to_mask(rec["mask"])
            name = mask_filename(str(rec["id"]))
            if target_mode(rec) == "one":
                rec["mask_png"] = f"{MASKS}/{name}"
                save_mask_png(mask, self.out_dir / rec["mask_png"])
            else:  # the union (none when nothing was found) and one PNG per target
                stem = Path(name).stem
                rec["mask_png"] = f"{MASKS}/{name}" if rec["found"] else None
                rec["target_mask_pngs"] = [
                    f"{MASKS}/{stem}.target{k}.png" for k in range(len(rec["targets"]))
                ]
                for t, rel in zip(rec["targets"], rec["target_mask_pngs"], strict=True):
                    save_mask_png(rle_to_mask(t["mask"]), self.out_dir / rel)
                if rec["found"]:
                    save_mask_png(mask, self.out_dir / rec["mask_png"])
            if self.overlays:
                from hybridgl.images import load_image
                from hybridgl.viz import overlay, save_image

                if image is None:
                    image = load_image(unit.data["image_path"], max_pixels=self.max_pixels)
                ov_rel = f"{OVERLAYS}/{Path(name).stem}.jpg"
                box = rec["box"] if rec["found"] else None
                label = rec["expression"]
                if not rec["found"] and target_mode(rec) != "one":
                    label += " (not found in this image)"
                save_image(overlay(image, mask, box=box, label=label), self.out_dir / ov_rel)
                rec["overlay"] = ov_rel
            self.writer.write(rec)
            self.counts.done += 1
        self.writer.commit()
        self.progress.rows(len(records), failed)
        self.progress.unit_done()


def target_mode(record: dict[str, Any]) -> str:
    """The target mode a record was answered in (its ``evidence.mode``; ``"one"`` for
    records written before the option existed)."""
    evidence = record.get("evidence")
    return str(evidence.get("mode") or "one") if isinstance(evidence, dict) else "one"


def coco_results(record: dict[str, Any], category_id: int = 1) -> list[dict[str, Any]]:
    """The COCO results entries of one batch record (:func:`hybridgl.types.coco_result_entry`).

    ``image_id`` is the row's ``image_id`` when the input gave one, else its image path.
    A record answered with ``targets="one"`` gives one entry (its mask, also when empty),
    as before the option existed; with ``"many"`` / ``"auto"`` one entry per target (its
    mask and score), none when nothing was found (as :meth:`Prediction.to_coco_results`).
    """
    from hybridgl.types import coco_result_entry

    image_id = record.get("image_id", record["image"])
    category = int(record.get("category_id", category_id))
    if target_mode(record) == "one":
        return [coco_result_entry(record["mask"], image_id, record.get("score"), category)]
    return [
        coco_result_entry(t["mask"], image_id, t.get("score"), category)
        for t in record.get("targets") or []
    ]


def write_coco_results(results: Path, target: Path, order: list[str] | None = None) -> int:
    """DIR/results.coco.json: the COCO results of every row whose last record succeeded
    (:func:`coco_results`: one per row, or one per target), in the order of the row ids
    ``order`` (the input's), whatever order an engine finished them in; ids not in it
    follow in the order of the results file."""
    from hybridgl.fileio import atomic_write_json

    current = read_records(results, key=_record_id).current()
    if order is not None:
        rank = {rid: i for i, rid in enumerate(order)}
        current.sort(key=lambda r: rank.get(str(r.get("id")), len(rank)))  # stable
    entries = [e for r in current if not r.get("error") and "mask" in r for e in coco_results(r)]
    atomic_write_json(target, entries, indent=None)
    return len(entries)


def _record_id(rec: dict[str, Any]) -> str | None:
    return str(rec["id"]) if "id" in rec else None


def _write_summary(
    out_dir: Path, input_path: Path, counts: Counts, seconds: float, facts: dict[str, Any]
) -> None:
    from hybridgl.fileio import atomic_write_json

    doc = {
        "input": str(input_path),
        "done": counts.done,
        "skipped": counts.skipped,
        "failed": counts.failed,
        "failed_ids": counts.failed_ids[:1000],
        "seconds": round(seconds, 3),
        "engine": facts.get("engine"),
        "workers": facts.get("workers"),
        "built": facts.get("built", []),  # what each worker's segmenter was built with
    }
    try:
        atomic_write_json(out_dir / "summary.json", doc)
    except OSError:
        pass


def _target_rules(settings: BatchSettings) -> dict[str, Any] | None:
    """The run's thresholds as a plain dict (None: the defaults), checked before any work.

    Raises:
        UsageError: an unknown target mode. InputError: an unusable thresholds file.
    """
    from hybridgl.targets import TARGET_MODES, ThresholdsError, load_thresholds

    if settings.targets not in TARGET_MODES:
        raise UsageError(f"targets must be one of {list(TARGET_MODES)}, got {settings.targets!r}")
    if settings.thresholds is None:
        return None
    try:
        return load_thresholds(settings.thresholds).to_dict()
    except ThresholdsError as e:
        raise InputError(str(e)) from None


@dataclass
class BatchSettings:
    """The batch job's own settings (the model is the job's :class:`ModelSpec`)."""

    expressions: list[str] = field(default_factory=list)  # for a folder input
    top_k: int = 3
    guidance: bool = True
    polygons: bool = True
    overlays: bool = False
    formats: tuple[str, ...] = ()  # "coco" adds results.coco.json
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = True
    targets: str = "one"  # zero, one or many targets (docs/TARGETS.md); rows may override
    thresholds: Any = None  # TargetRules, a thresholds JSON path or a dict; None: defaults


def run_batch(
    input_path: Path,
    out_dir: Path,
    spec: ModelSpec,
    settings: BatchSettings,
    options: EngineOptions | None = None,
) -> Counts:
    """Run a batch: read the rows, skip those done, run the rest on the engine.

    The run file (``DIR/run.json``) records the model spec; a resume with other model
    options is refused naming them (:class:`hybridgl.jobs.runfile.RunConflictError`).

    Raises:
        UsageError: ``--out`` is a file, or expressions given with a file input.
        InputError: the input is missing or holds no rows; the folder holds another run.
    """
    options = options or EngineOptions()
    t_start = time.perf_counter()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    rules = _target_rules(settings)
    rows, bad_rows, duplicates = read_rows(input_path, list(settings.expressions))

    out_dir.mkdir(parents=True, exist_ok=True)
    # targets and thresholds are None for the default, as in run files written before them
    run_settings = {
        "job": "batch",
        "top_k": settings.top_k,
        "guidance": settings.guidance,
        "targets": None if settings.targets == "one" else settings.targets,
        "thresholds": rules,
    }
    check_run_file(out_dir, run_settings, spec)
    results_path = out_dir / RESULTS
    log_ = read_records(results_path, key=_record_id)
    # the resume rule: a row whose last record succeeded is skipped; failed rows run again
    done_ids = log_.done_ids(retry_failed=True)

    counts = Counts(skipped=duplicates)
    todo = [r for r in rows if r.id not in done_ids]
    counts.skipped += len(rows) - len(todo)
    bad_todo = [b for b in bad_rows if b.id not in done_ids]
    counts.skipped += len(bad_rows) - len(bad_todo)

    # empty expressions fail up front, so they never cost an image encoding
    empty = [r for r in todo if not r.expression.strip()]
    units = make_units([r for r in todo if r.expression.strip()])

    writer = RecordWriter(results_path)
    progress = Progress(
        len(todo) + len(bad_todo), len(units), desc="batch", disable=not settings.progress
    )
    sink = BatchSink(
        out_dir,
        writer,
        counts,
        progress,
        overlays=settings.overlays,
        max_pixels=settings.max_pixels,
    )
    task = BatchTask(
        top_k=settings.top_k,
        guidance=settings.guidance,
        polygons=settings.polygons,
        max_pixels=settings.max_pixels,
        caller_proposals_only=spec.sam is None,
        targets=settings.targets,
        thresholds=rules,
    )
    facts: dict[str, Any] = {}
    try:
        for b in bad_todo:
            sink.fail(_error_record(b, b.error, "bad_record"))
            progress.rows(1, 1)
        for r in empty:
            sink.fail(_error_record(r, ExpressionError("expression is empty")))
            progress.rows(1, 1)
        writer.commit()
        facts = run_units(units, task, sink, spec=spec.with_driver_env(), options=options)
    finally:
        progress.close()
        writer.close()
        if "coco" in settings.formats:
            write_coco_results(results_path, out_dir / COCO_RESULTS, [r.id for r in rows])
        seconds = time.perf_counter() - t_start
        _write_summary(out_dir, input_path, counts, seconds, facts)
        print(
            f"done {counts.done}, skipped {counts.skipped}, failed {counts.failed}, "
            f"time {seconds:.1f} s ({results_path})",
            flush=True,
        )
    return counts

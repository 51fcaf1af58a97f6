"""The batch job: many (image, expression) rows, grouped by image, resumable.

The job behind ``hybridgl batch`` (the face in :mod:`hybridgl.cli.batch` only parses
arguments): reading the work list (JSONL, CSV or a folder), one work unit per image,
:class:`BatchTask` on a worker (local or Ray), :class:`BatchSink` in the driver (mask PNGs,
overlays, the one resumable ``results.jsonl``), the run file that refuses a resume with
other model options, and the COCO results file. Nothing here imports the CLI or server.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridgl.errors import ExpressionError, InputError, UsageError, error_record_fields
from hybridgl.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, scan_image_folder
from hybridgl.jobs.engine import EngineOptions, Progress, run_units
from hybridgl.jobs.records import RecordWriter, read_records
from hybridgl.jobs.runfile import check_run_file
from hybridgl.jobs.units import UnitWorker, WorkUnit, encode_and_predict
from hybridgl.spec import ModelSpec

IMAGE_KEYS = ("image", "image_path", "file_name", "path")
EXPRESSION_KEYS = ("expression", "sent", "text")
RESULTS = "results.jsonl"
COCO_RESULTS = "results.coco.json"
MASKS = "masks"
OVERLAYS = "overlays"


@dataclass
class Row:
    """One unit of work: an expression on an image."""

    id: str
    line: int
    image: str  # as written in the input
    expression: str
    image_path: Path
    proposals: Path | None = None
    explicit_id: bool = False
    image_id: Any = None  # the COCO image id, when the input gives one (--format coco)

    @property
    def group_key(self) -> tuple[str, str]:
        return (str(self.image_path), str(self.proposals or ""))


@dataclass
class BadRow:
    """An input row that could not be understood."""

    id: str
    line: int
    error: str
    image: str | None = None
    expression: str | None = None


@dataclass
class Counts:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failed_ids: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- input


def _pick(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in record and record[k] not in (None, ""):
            return record[k]
    return None


def default_id(image: str, expression: str) -> str:
    """Row id used when the input gives none: ``<image>::<expression>``."""
    return f"{image}::{expression}"


def _make_row(record: dict[str, Any], line: int, base: Path, where: str) -> Row | BadRow:
    raw_id = record.get("id")
    rid = None if raw_id in (None, "") else str(raw_id).strip()
    image = _pick(record, IMAGE_KEYS)
    expression = _pick(record, EXPRESSION_KEYS)
    if image is None or not isinstance(image, str):
        return BadRow(id=rid or f"line:{line}", line=line, error=f"{where}: no image path")
    if expression is None:
        expression = ""
    if not isinstance(expression, str):
        return BadRow(
            id=rid or f"line:{line}",
            line=line,
            image=image,
            error=f"{where}: expression must be text",
        )
    row = Row(
        id=rid or default_id(image, expression),
        line=line,
        image=image,
        expression=expression,
        image_path=(base / image) if not Path(image).is_absolute() else Path(image),
        explicit_id=rid is not None,
    )
    image_id = record.get("image_id")
    if isinstance(image_id, str) and image_id.strip().isdigit():
        image_id = int(image_id)  # CSV cells are text
    if isinstance(image_id, (int, str)) and image_id != "":
        row.image_id = image_id
    props = record.get("proposals")
    if props not in (None, ""):
        row.proposals = (base / str(props)) if not Path(str(props)).is_absolute() else Path(props)
    return row


def _read_jsonl(path: Path) -> Iterator[Row | BadRow]:
    base = path.parent
    with open(path, encoding="utf-8-sig") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRow(id=f"line:{n}", line=n, error=f"{where}: not JSON ({e.msg})")
                continue
            if not isinstance(record, dict):
                yield BadRow(id=f"line:{n}", line=n, error=f"{where}: not a JSON object")
                continue
            yield _make_row(record, n, base, where)


#: Longest CSV field of a row (the csv module's own default limit): a longer one fails
#: its row only, not the whole file.
MAX_CSV_FIELD = 128 * 1024


def _read_csv(path: Path) -> Iterator[Row | BadRow]:
    base = path.parent
    # the csv module refuses the whole file at its first field over its process-wide
    # limit; lift it while reading (memory is bounded by the file) and judge per row
    limit = csv.field_size_limit(sys.maxsize)
    try:
        yield from _csv_rows(path, base)
    finally:
        csv.field_size_limit(limit)


def _csv_rows(path: Path, base: Path) -> Iterator[Row | BadRow]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not any(k in header for k in IMAGE_KEYS) or not any(
            k in header for k in EXPRESSION_KEYS
        ):
            raise InputError(
                f"{path}: the CSV header must name an image column ({'/'.join(IMAGE_KEYS)}) "
                f"and an expression column ({'/'.join(EXPRESSION_KEYS)}); got {header}"
            )
        reader.fieldnames = header
        for record in reader:
            n = reader.line_num
            long = [k for k, v in record.items() if isinstance(v, str) and len(v) > MAX_CSV_FIELD]
            if long:
                yield BadRow(
                    id=f"line:{n}",
                    line=n,
                    error=f"{path.name} line {n}: field {long[0]!r} is longer than "
                    f"{MAX_CSV_FIELD // 1024} KB",
                )
                continue
            clean = {
                k: (v.strip() if isinstance(v, str) and k != "expression" else v)
                for k, v in record.items()
                if k is not None
            }
            yield _make_row(clean, n, base, f"{path.name} line {n}")


def _read_folder(folder: Path, expressions: list[str]) -> Iterator[Row]:
    from hybridgl.names import safe_text

    images = scan_image_folder(folder)
    if not images:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in folder {folder}")
    n = 0
    for img in images:
        # a name that is not UTF-8 is kept as text with its bytes escaped (\xNN), so the
        # records stay valid JSON; the file itself is read by its real path
        rel = safe_text(img.relative_to(folder).as_posix())
        for expr in expressions:
            n += 1
            yield Row(id=default_id(rel, expr), line=n, image=rel, expression=expr, image_path=img)


def read_rows(input_path: Path, expressions: list[str]) -> tuple[list[Row], list[BadRow], int]:
    """Read the work list.

    Returns:
        ``(rows, bad_rows, duplicates)``: rows in input order with unique ids, rows that
        could not be understood, and how many rows repeated an earlier row exactly.

    Raises:
        InputError: the input is missing, of an unknown kind, or holds no rows.
        UsageError: ``--expression`` with a file input, or a folder without it.
    """
    if not input_path.exists():
        raise InputError(f"input not found: {input_path}")
    if input_path.is_dir():
        if not expressions:
            raise UsageError("a folder INPUT needs at least one --expression")
        for k, text in enumerate(expressions):
            if not text.strip():
                raise UsageError(f"--expression {k + 1} is empty")
        items: Iterator[Row | BadRow] = _read_folder(input_path, expressions)
    else:
        if expressions:
            raise UsageError(
                "--expression applies to a folder INPUT; put expressions in the JSONL/CSV rows"
            )
        suffix = input_path.suffix.lower()
        try:
            if suffix in (".jsonl", ".ndjson"):
                items = iter(list(_read_jsonl(input_path)))
            elif suffix == ".csv":
                items = iter(list(_read_csv(input_path)))
            else:
                raise InputError(
                    f"unknown input kind {input_path.name!r}: use a .jsonl or .csv file, or a folder"
                )
        except UnicodeDecodeError as e:
            raise InputError(f"{input_path} is not UTF-8 text: {e}") from None
        except csv.Error as e:
            raise InputError(f"{input_path}: malformed CSV: {e}") from None
    rows: list[Row] = []
    bad: list[BadRow] = []
    seen: dict[str, Row] = {}
    duplicates = 0
    for item in items:
        if isinstance(item, BadRow):
            bad.append(item)
            continue
        first = seen.get(item.id)
        if first is not None:
            same = (first.image, first.expression) == (item.image, item.expression)
            if same and not item.explicit_id:
                duplicates += 1
                continue
            # reported under its own row: the first row keeps the id and its record
            bad.append(
                BadRow(
                    id=f"line:{item.line}",
                    line=item.line,
                    image=item.image,
                    expression=item.expression,
                    error=f"duplicate id {item.id!r} (first used on line {first.line})",
                )
            )
            continue
        seen[item.id] = item
        rows.append(item)
    if not rows and not bad:
        raise InputError(f"no rows in {input_path}")
    return rows, bad, duplicates


# --------------------------------------------------------------------------- output


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def mask_filename(row_id: str) -> str:
    """A file name for a row's mask: the id when it is a safe name, else a sanitised
    prefix plus a hash of the id (distinct ids never share a file)."""
    safe = _SAFE.sub("_", row_id).strip("._")
    if safe == row_id and 0 < len(safe) <= 100:
        return f"{safe}.png"
    digest = hashlib.sha1(row_id.encode("utf-8")).hexdigest()[:12]
    return f"{safe[:80]}-{digest}.png" if safe else f"{digest}.png"


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

    def run(self, worker: UnitWorker, unit: WorkUnit) -> list[dict[str, Any]]:
        from hybridgl.images import load_image
        from hybridgl.masks import load_proposals_file

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
        _, preds = encode_and_predict(
            seg,
            image,
            proposals,
            [r["expression"] for r in unit.rows],
            self.top_k,
            self.guidance,
            max_pixels=self.max_pixels,
        )
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
            rec["mask_png"] = f"{MASKS}/{name}"
            save_mask_png(mask, self.out_dir / rec["mask_png"])
            if self.overlays:
                from hybridgl.images import load_image
                from hybridgl.viz import overlay, save_image

                if image is None:
                    image = load_image(unit.data["image_path"], max_pixels=self.max_pixels)
                ov_rel = f"{OVERLAYS}/{Path(name).stem}.jpg"
                box = rec["box"] if rec["found"] else None
                save_image(
                    overlay(image, mask, box=box, label=rec["expression"]), self.out_dir / ov_rel
                )
                rec["overlay"] = ov_rel
            self.writer.write(rec)
            self.counts.done += 1
        self.writer.commit()
        self.progress.rows(len(records), failed)
        self.progress.unit_done()


def coco_result(record: dict[str, Any], category_id: int = 1) -> dict[str, Any]:
    """The COCO results entry of one batch record (:func:`hybridgl.types.coco_result_entry`).

    ``image_id`` is the row's ``image_id`` when the input gave one, else its image path.
    """
    from hybridgl.types import coco_result_entry

    return coco_result_entry(
        record["mask"],
        record.get("image_id", record["image"]),
        record.get("score"),
        int(record.get("category_id", category_id)),
    )


def write_coco_results(results: Path, target: Path) -> int:
    """DIR/results.coco.json: one COCO result per row whose last record succeeded."""
    from hybridgl.fileio import atomic_write_json

    log_ = read_records(results, key=_record_id)
    entries = [coco_result(r) for r in log_.current() if not r.get("error") and "mask" in r]
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
    rows, bad_rows, duplicates = read_rows(input_path, list(settings.expressions))

    out_dir.mkdir(parents=True, exist_ok=True)
    check_run_file(
        out_dir, {"job": "batch", "top_k": settings.top_k, "guidance": settings.guidance}, spec
    )
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
            write_coco_results(results_path, out_dir / COCO_RESULTS)
        seconds = time.perf_counter() - t_start
        _write_summary(out_dir, input_path, counts, seconds, facts)
        print(
            f"done {counts.done}, skipped {counts.skipped}, failed {counts.failed}, "
            f"time {seconds:.1f} s ({results_path})",
            flush=True,
        )
    return counts

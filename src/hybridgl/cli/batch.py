"""``hybridgl batch INPUT --out DIR``: many (image, expression) rows, resumable."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridgl.cli.common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_PARTIAL,
    InputError,
    UsageError,
    add_engine_args,
    add_max_pixels_arg,
    add_model_args,
    build_segmenter,
    engine_options,
)
from hybridgl.images import DEFAULT_MAX_PIXELS
from hybridgl.jobs.engine import Progress, run_units
from hybridgl.jobs.records import RecordWriter, read_records
from hybridgl.jobs.units import SegmenterSpec, UnitWorker, WorkUnit, encode_and_predict

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
IMAGE_KEYS = ("image", "image_path", "file_name", "path")
EXPRESSION_KEYS = ("expression", "sent", "text")
RESULTS = "results.jsonl"
COCO_RESULTS = "results.coco.json"
MASKS = "masks"
OVERLAYS = "overlays"

DESCRIPTION = """\
Segment many (image, expression) rows and append one JSON record per row to
DIR/results.jsonl, with the mask as PNG under DIR/masks/.

INPUT is one of:
  - a .jsonl file, one object per line: {"image": PATH, "expression": TEXT, "id": ID}
  - a .csv file with a header row and the columns image, expression and optionally id
  - a folder of images, segmented with every --expression
Image paths are relative to the folder of the input file. "id" is optional; without it
a row's id is "<image>::<expression>". An optional "proposals" field/column names a
.npy file of N x H x W bool masks used instead of SAM for that row's image.

Rows are grouped by image, so each image is encoded once. Rerunning with the same
--out skips rows whose id already has a successful record in results.jsonl; failed
rows are tried again (the last record of an id is the one that counts). A row that
fails (unreadable image, empty expression, ...) is recorded with an "error" field and
the run goes on; the exit code is then 5.
"""


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


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch",
        help="segment many (image, expression) rows from JSONL/CSV or a folder; resumable",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="a .jsonl or .csv file, or a folder of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--expression",
        "-e",
        dest="expressions",
        action="append",
        default=[],
        metavar="TEXT",
        help="expression applied to every image of a folder INPUT (repeatable)",
    )
    p.add_argument(
        "--overlays",
        action="store_true",
        help="also write an overlay JPEG per row under DIR/overlays/",
    )
    p.add_argument(
        "--no-polygons",
        action="store_true",
        help="leave the polygons out of results.jsonl (RLE only; smaller files)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=("jsonl", "coco"),
        default=None,
        help="coco: also write DIR/results.coco.json, a COCO results file of every row done "
        "(Prediction.to_coco_result; image_id from the row's image_id field, else its image "
        "path). results.jsonl is always written",
    )
    add_max_pixels_arg(p)
    add_model_args(p)
    add_engine_args(p)
    p.set_defaults(func=run)
    return p


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


def _read_csv(path: Path) -> Iterator[Row | BadRow]:
    base = path.parent
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
            clean = {
                k: (v.strip() if isinstance(v, str) and k != "expression" else v)
                for k, v in record.items()
                if k is not None
            }
            yield _make_row(clean, n, base, f"{path.name} line {n}")


def _read_folder(folder: Path, expressions: list[str]) -> Iterator[Row]:
    images = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not images:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in folder {folder}")
    n = 0
    for img in images:
        rel = img.relative_to(folder).as_posix()
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


def _error_record(row: Row | BadRow | dict[str, Any], error: BaseException | str) -> dict[str, Any]:
    if isinstance(error, BaseException):
        message = str(error).strip() or type(error).__name__
        kind = type(error).__name__
    else:
        message, kind = error, "InputError"
    if not isinstance(row, dict):
        row = {"id": row.id, "line": row.line, "image": row.image, "expression": row.expression}
    rec: dict[str, Any] = {"id": row["id"], "line": row["line"]}
    if row.get("image") is not None:
        rec["image"] = row["image"]
    if row.get("expression") is not None:
        rec["expression"] = row["expression"]
    rec["error"] = message
    rec["error_type"] = kind
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
        from hybridgl.cli.segment import load_proposals
        from hybridgl.images import load_image

        try:
            image = load_image(unit.data["image_path"], max_pixels=self.max_pixels)
            props = unit.data.get("proposals")
            if not props and self.caller_proposals_only:
                raise InputError("no proposals for this row, and --sam none has no model")
            proposals = load_proposals(props, *image.shape[:2]) if props else None
        except Exception as e:  # noqa: BLE001 - recorded per row, the run goes on
            return self.failed(unit, e)
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
                out.append(_error_record(row, pred))
                continue
            try:
                rec = pred.to_dict(polygons=self.polygons)
            except Exception as e:  # noqa: BLE001
                out.append(_error_record(row, e))
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


def run(args: argparse.Namespace) -> int:
    from hybridgl.errors import ExpressionError

    t_start = time.perf_counter()
    input_path = Path(args.input)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    options = engine_options(args)
    rows, bad_rows, duplicates = read_rows(input_path, list(args.expressions))

    out_dir.mkdir(parents=True, exist_ok=True)
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
        len(todo) + len(bad_todo), len(units), desc="batch", disable=bool(args.no_progress)
    )
    max_pixels = args.max_pixels or None  # 0: no limit of ours
    sink = BatchSink(
        out_dir, writer, counts, progress, overlays=bool(args.overlays), max_pixels=max_pixels
    )
    task = BatchTask(
        top_k=args.top_k,
        guidance=not args.no_guidance,
        polygons=not args.no_polygons,
        max_pixels=max_pixels,
        caller_proposals_only=args.sam == "none",
    )
    try:
        for b in bad_todo:
            sink.fail(_error_record(b, b.error))
            progress.rows(1, 1)
        for r in empty:
            sink.fail(_error_record(r, ExpressionError("expression is empty")))
            progress.rows(1, 1)
        writer.commit()
        run_units(
            units,
            task,
            sink,
            spec=SegmenterSpec.from_args(args, threads=options.threads_per_worker),
            options=options,
            factory=(lambda: build_segmenter(args)) if options.engine == "local" else None,
        )
    finally:
        progress.close()
        writer.close()
        if "coco" in (args.formats or []):
            write_coco_results(results_path, out_dir / COCO_RESULTS)
        seconds = time.perf_counter() - t_start
        _write_summary(out_dir, input_path, counts, seconds)
        print(
            f"done {counts.done}, skipped {counts.skipped}, failed {counts.failed}, "
            f"time {seconds:.1f} s ({results_path})",
            flush=True,
        )
    return EXIT_PARTIAL if counts.failed else EXIT_OK


def coco_result(record: dict[str, Any], category_id: int = 1) -> dict[str, Any]:
    """A COCO results entry of one batch record, as ``Prediction.to_coco_result`` makes it.

    ``image_id`` is the row's ``image_id`` when the input gave one, else its image path;
    ``segmentation`` the record's RLE; ``bbox`` pycocotools' box of that mask.
    """
    from pycocotools import mask as mask_utils

    rle = record["mask"]
    bbox = [
        float(v)
        for v in mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    ]
    score = record.get("score")
    return {
        "image_id": record.get("image_id", record["image"]),
        "category_id": int(record.get("category_id", category_id)),
        "segmentation": rle,
        "bbox": bbox,
        "score": 0.0 if score is None else float(score),
    }


def write_coco_results(results: Path, target: Path) -> int:
    """DIR/results.coco.json: one COCO result per row whose last record succeeded."""
    from hybridgl.fileio import atomic_write_json

    log_ = read_records(results, key=_record_id)
    entries = [coco_result(r) for r in log_.current() if not r.get("error") and "mask" in r]
    atomic_write_json(target, entries, indent=None)
    return len(entries)


def _record_id(rec: dict[str, Any]) -> str | None:
    return str(rec["id"]) if "id" in rec else None


def _write_summary(out_dir: Path, input_path: Path, counts: Counts, seconds: float) -> None:
    from hybridgl.fileio import atomic_write_json

    doc = {
        "input": str(input_path),
        "done": counts.done,
        "skipped": counts.skipped,
        "failed": counts.failed,
        "failed_ids": counts.failed_ids[:1000],
        "seconds": round(seconds, 3),
    }
    try:
        atomic_write_json(out_dir / "summary.json", doc)
    except OSError:
        pass

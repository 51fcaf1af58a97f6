"""``hybridgl batch INPUT --out DIR``: many (image, expression) rows, resumable."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
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
    add_model_args,
    build_segmenter,
    eprint,
    predict_options,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
IMAGE_KEYS = ("image", "image_path", "file_name", "path")
EXPRESSION_KEYS = ("expression", "sent", "text")
RESULTS = "results.jsonl"
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
    add_model_args(p)
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
            bad.append(
                BadRow(
                    id=item.id,
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


def load_done(results: Path) -> tuple[set[str], int]:
    """Ids with a successful record in results.jsonl, and the number of unreadable lines."""
    done: set[str] = set()
    failed: set[str] = set()
    broken = 0
    if not results.is_file():
        return done, 0
    with open(results, encoding="utf-8", errors="replace") as f:
        for text in f:
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError:
                broken += 1
                continue
            if not isinstance(rec, dict) or "id" not in rec:
                broken += 1
                continue
            rid = str(rec["id"])
            if rec.get("error"):
                failed.add(rid)
                done.discard(rid)
            else:
                done.add(rid)
                failed.discard(rid)
    return done, broken


class ResultsWriter:
    """Appends JSON lines; :meth:`commit` flushes and fsyncs (once per image group)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = False
        if path.is_file() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"  # a run killed mid-line
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if needs_newline:
            self._f.write("\n")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def commit(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.commit()
            self._f.close()


def _error_record(row: Row | BadRow, error: BaseException | str) -> dict[str, Any]:
    if isinstance(error, BaseException):
        message = str(error).strip() or type(error).__name__
        kind = type(error).__name__
    else:
        message, kind = error, "InputError"
    rec: dict[str, Any] = {"id": row.id, "line": row.line}
    if row.image is not None:
        rec["image"] = row.image
    if row.expression is not None:
        rec["expression"] = row.expression
    rec["error"] = message
    rec["error_type"] = kind
    return rec


# --------------------------------------------------------------------------- run


def _progress(total: int, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="batch",
        unit="expr",
        file=sys.stderr,
        disable=disable,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def run(args: argparse.Namespace) -> int:
    from hybridgl.cli.segment import load_proposals
    from hybridgl.errors import ExpressionError
    from hybridgl.images import load_image
    from hybridgl.masks import prediction_record, save_mask_png

    t_start = time.perf_counter()
    input_path = Path(args.input)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    rows, bad_rows, duplicates = read_rows(input_path, list(args.expressions))

    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS
    done_ids, broken = load_done(results_path)
    if broken:
        eprint(f"hybridgl: warning: ignored {broken} unreadable line(s) in {results_path}")

    counts = Counts(skipped=duplicates)
    todo = [r for r in rows if r.id not in done_ids]
    counts.skipped += len(rows) - len(todo)
    bad_todo = [b for b in bad_rows if b.id not in done_ids]
    counts.skipped += len(bad_rows) - len(bad_todo)

    # empty expressions fail up front, so they never cost an image encoding
    empty = [r for r in todo if not r.expression.strip()]
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in todo:
        if r.expression.strip():
            groups.setdefault(r.group_key, []).append(r)

    writer = ResultsWriter(results_path)
    bar = _progress(len(todo) + len(bad_todo), disable=bool(args.no_progress))

    def fail(row: Row | BadRow, error: BaseException | str) -> None:
        rec = _error_record(row, error)
        writer.write(rec)
        counts.failed += 1
        counts.failed_ids.append(row.id)
        bar.write(f"hybridgl: failed {row.id}: {rec['error']}", file=sys.stderr)

    seg = None
    opts = predict_options(args)
    try:
        for b in bad_todo:
            fail(b, b.error)
            bar.update(1)
        for r in empty:
            fail(r, ExpressionError("expression is empty"))
            bar.update(1)
        writer.commit()

        for gi, group in enumerate(groups.values(), start=1):
            bar.set_postfix_str(f"images {gi - 1}/{len(groups)} failed {counts.failed}")
            first = group[0]
            try:
                image = load_image(first.image_path)
                proposals = load_proposals(first.proposals) if first.proposals else None
            except Exception as e:  # noqa: BLE001 - recorded per row, the run goes on
                for r in group:
                    fail(r, e)
                bar.update(len(group))
                writer.commit()
                continue
            if seg is None:
                seg = build_segmenter(args)  # WeightsError here ends the run (exit 4)
            try:
                state = seg.set_image(image, proposals=proposals)
            except Exception as e:  # noqa: BLE001
                for r in group:
                    fail(r, e)
                bar.update(len(group))
                writer.commit()
                continue

            valid = group
            try:
                preds: list[Any] = seg.predict_many([r.expression for r in valid], **opts)
            except Exception:  # noqa: BLE001 - find the row at fault one by one
                preds = []
                for r in valid:
                    try:
                        preds.append(seg.predict(r.expression, **opts))
                    except Exception as e:  # noqa: BLE001
                        preds.append(e)
            for r, pred in zip(valid, preds, strict=True):
                if isinstance(pred, BaseException):
                    fail(r, pred)
                    bar.update(1)
                    continue
                try:
                    rec = prediction_record(
                        pred, r.expression, id=r.id, include_polygons=not args.no_polygons
                    )
                    mask_rel = f"{MASKS}/{mask_filename(r.id)}"
                    save_mask_png(pred.mask, out_dir / mask_rel)
                    out = {"id": rec.pop("id"), "line": r.line, "image": r.image, **rec}
                    out["mask_png"] = mask_rel
                    if args.overlays:
                        from hybridgl.viz import overlay, save_image

                        ov_rel = f"{OVERLAYS}/{Path(mask_filename(r.id)).stem}.jpg"
                        drawn = overlay(
                            state.image,
                            pred.mask,
                            box=pred.box if pred.found else None,
                            label=r.expression,
                        )
                        save_image(drawn, out_dir / ov_rel)
                        out["overlay"] = ov_rel
                except OSError:
                    raise  # a full disk or a read-only folder fails every row: stop
                except Exception as e:  # noqa: BLE001
                    fail(r, e)
                    bar.update(1)
                    continue
                writer.write(out)
                counts.done += 1
                bar.update(1)
            writer.commit()
        bar.set_postfix_str(f"images {len(groups)}/{len(groups)} failed {counts.failed}")
    finally:
        bar.close()
        writer.close()
        seconds = time.perf_counter() - t_start
        _write_summary(out_dir, input_path, counts, seconds)
        print(
            f"done {counts.done}, skipped {counts.skipped}, failed {counts.failed}, "
            f"time {seconds:.1f} s ({results_path})",
            flush=True,
        )
    return EXIT_PARTIAL if counts.failed else EXIT_OK


def _write_summary(out_dir: Path, input_path: Path, counts: Counts, seconds: float) -> None:
    from hybridgl.masks import atomic_write_bytes

    doc = {
        "input": str(input_path),
        "done": counts.done,
        "skipped": counts.skipped,
        "failed": counts.failed,
        "failed_ids": counts.failed_ids[:1000],
        "seconds": round(seconds, 3),
    }
    try:
        atomic_write_bytes(out_dir / "summary.json", (json.dumps(doc, indent=2) + "\n").encode())
    except OSError:
        pass

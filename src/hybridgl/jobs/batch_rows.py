"""The work list of a batch: rows read from a JSONL or CSV file or a folder of images,
with the rows that cannot be understood kept as :class:`BadRow` (each becomes a failed
record), and the duplicates counted."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridgl.errors import InputError, UsageError
from hybridgl.images import IMAGE_EXTENSIONS, scan_image_folder
from hybridgl.targets import TARGET_MODES

IMAGE_KEYS = ("image", "image_path", "file_name", "path")
EXPRESSION_KEYS = ("expression", "sent", "text")


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
    targets: str | None = None  # the row's own target mode (docs/TARGETS.md); None: the run's

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
    targets = record.get("targets")
    if targets not in (None, ""):
        if not isinstance(targets, str) or targets.strip() not in TARGET_MODES:
            return BadRow(
                id=row.id,
                line=line,
                image=image,
                expression=expression,
                error=f"{where}: targets must be one of {list(TARGET_MODES)}, got {targets!r}",
            )
        row.targets = targets.strip()
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

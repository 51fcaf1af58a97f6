"""The generic reader: a COCO-style instances JSON plus a JSONL of expressions (one object,
several, or none per expression), for evaluating and calibrating on one's own data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from hybridgl.errors import DataError
from hybridgl.eval.refer import (
    EvalData,
    Expression,
    _check_expression,
    _dedupe,
    _index_instances,
    load_json,
)

__all__ = ["load_generic"]


def _targets_row(
    row: dict[str, Any], n: int, split: str | None, images: dict, anns: dict, where: str
) -> Expression:
    """A generic row naming several objects (``"ann_id": [id, ...]``) or none (``"ann_id":
    []`` or ``[-1]``, or ``"no_target": true``; then ``image_id`` is needed), read as
    gRefCOCO is: the target is the union of the non-crowd annotations."""
    text, raw, image_id = row.get("expression"), row.get("ann_id"), row.get("image_id")
    ids = [] if raw is None else raw
    e = Expression(
        sent_id=row.get("sent_id", n),
        sentence=text if isinstance(text, str) else "",
        image_id=image_id,
        ann_id=(),
        ref_id=row.get("ref_id", row.get("sent_id", n)),
        split=row.get("split", split),
    )

    def bad(msg: str, kind: str = "bad_record") -> Expression:
        return replace(e, error=f"{where}: {msg}", error_kind=kind)

    scalar = (int, str)
    if not isinstance(text, str):
        return bad("needs a string 'expression'")
    if not all(row.get(k) is None or isinstance(row.get(k), scalar) for k in (
        "image_id", "sent_id", "ref_id")):  # fmt: skip
        return bad("image_id, sent_id and ref_id must be integers or strings")
    if not isinstance(ids, list) or not all(
        isinstance(a, scalar) and not isinstance(a, bool) for a in ids
    ):
        return bad("'ann_id' must be a list of integer or string annotation ids")
    none = ids in ([], [-1])
    if row.get("no_target") is True and not none:
        return bad("a no_target row lists annotations")
    targets = []
    for a in [] if none else ids:
        ann = anns.get(a)
        if ann is None:
            return bad(f"unknown ann_id {a!r}", "unknown_ann")
        image_id = ann.get("image_id") if image_id is None else image_id
        if ann.get("image_id") != image_id:
            return bad(f"ann_id {a!r} belongs to image {ann.get('image_id')!r}, not {image_id!r}")
        if not ann.get("iscrowd"):
            targets.append(a)
    if not none and not targets:
        return bad("every annotation of the row is a crowd annotation", "bad_annotation")
    if image_id is None:
        return bad("a row with no target needs its image_id")
    if image_id not in images:
        return bad(f"unknown image_id {image_id!r}", "unknown_image")
    if not text.strip():
        return bad("empty expression")
    return replace(e, image_id=image_id, ann_id=tuple(targets))


def load_generic(
    instances: str | Path,
    expressions: str | Path,
    images_dir: str | Path | None = None,
    name: str = "generic",
    split: str | None = None,
) -> EvalData:
    """Read a custom dataset: COCO instances JSON + JSONL of expressions.

    Each JSONL line is ``{"image_id", "ann_id", "expression"}`` with optional
    ``sent_id`` (default: the line number), ``ref_id`` and ``split`` (rows whose split
    differs from ``split`` are skipped when ``split`` is given). ``image_id`` may be
    left out: the annotation's image is used. ``ann_id`` may also be a list: the
    expression names every listed object (their union, crowd annotations left out); ``[]``,
    ``[-1]`` or ``"no_target": true`` (with ``image_id``) name nothing, as in gRefCOCO, and
    the report then has the GRES metrics. Images are read from ``images_dir``
    (default: the folder of the instances file) by their ``file_name``.

    Raises:
        DataError: a file is missing or the instances JSON is invalid. Bad JSONL lines do
            not raise: they become failed expressions.
    """
    inst_path = Path(instances)
    expr_path = Path(expressions)
    problems: list[str] = []
    images, anns, by_image = _index_instances(
        load_json(inst_path, "instances file"), inst_path, problems
    )
    if not expr_path.is_file():
        raise DataError(f"expressions file not found: {expr_path}")
    exprs: list[Expression] = []
    try:
        lines = expr_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read expressions file {expr_path}: {err}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            exprs.append(
                Expression(
                    sent_id=n,
                    sentence="",
                    image_id=None,
                    ann_id=None,
                    split=split,
                    error=f"{expr_path} line {n}: bad JSON ({err})",
                    error_kind="bad_record",
                )
            )
            continue
        if split is not None and "split" in row and row["split"] != split:
            continue
        if isinstance(row.get("ann_id"), list) or row.get("no_target") is True:
            exprs.append(_targets_row(row, n, split, images, anns, f"{expr_path} line {n}"))
            continue
        text = row.get("expression")
        ids = {k: row.get(k) for k in ("ann_id", "image_id", "sent_id", "ref_id")}
        good_ids = all(v is None or isinstance(v, (int, str)) for v in ids.values())
        ok = isinstance(text, str) and ids["ann_id"] is not None and good_ids
        if not good_ids:
            ids = dict.fromkeys(ids)
        ann_id, image_id = ids["ann_id"], ids["image_id"]
        if image_id is None and ann_id in anns:
            image_id = anns[ann_id].get("image_id")
        e = Expression(
            sent_id=ids["sent_id"] if ids["sent_id"] is not None else n,
            sentence=text if isinstance(text, str) else "",
            image_id=image_id,
            ann_id=ann_id,
            ref_id=ids["ref_id"] if ids["ref_id"] is not None else ann_id,
            split=row.get("split", split),
            category_id=anns.get(ann_id, {}).get("category_id"),
        )
        if not ok:
            e = replace(
                e,
                error=f"{expr_path} line {n}: needs an integer or string 'ann_id' (and ids) "
                "and a string 'expression'",
                error_kind="bad_record",
            )
        exprs.append(_check_expression(e, images, anns, inst_path))
    return EvalData(
        name=name,
        split=split or "all",
        format="generic",
        expressions=_dedupe(exprs, problems),
        images=images,
        annotations=anns,
        images_dir=Path(images_dir) if images_dir is not None else inst_path.parent,
        anns_by_image=by_image,
        problems=problems,
        expected_count=None,
        sources={"instances": str(inst_path), "expressions": str(expr_path)},
    )

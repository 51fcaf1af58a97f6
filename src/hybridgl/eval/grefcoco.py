"""gRefCOCO (GRES, Liu, Ding and Jiang, CVPR 2023): expressions with zero, one or many targets.

Published layout (the dataset's ``G_REFER`` reader)::

    <root>/grefcoco/grefs(unc).json    list of refs: ref_id, image_id, split, ann_id (a list;
                                       [-1] for no target), category_id, no_target,
                                       sentences=[{raw, sent, sent_id, tokens}], file_name
    <root>/grefcoco/instances.json     COCO-style images / annotations / categories
    <root>/images/train2014/           COCO train2014 images, by the image's file_name

``grefs(unc).p`` (a pickle of the same list) is read instead when present, with the REFER
reader's restricted unpickler (no code can run). A ref whose ``ann_id`` is ``[-1]`` (or
empty) or that is flagged ``no_target`` has no target; several annotations are merged into
one ground truth, leaving out crowd annotations as the reference does. Each expression's
``ann_id`` is the tuple of its annotation ids (``()`` for no target).

Defences as for REFER data: files larger than :data:`MAX_FILE_BYTES` are refused before
they are read, every error names its file, a bad ref becomes a failed expression.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridgl.eval.refer import (
    DataError,
    EvalData,
    Expression,
    _dedupe,
    _index_instances,
    _norm,
    load_json,
    load_refs_pickle,
)

__all__ = ["GREFCOCO_SPLITS", "MAX_FILE_BYTES", "check_size", "load_grefcoco"]

GREFCOCO_SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
#: The largest data file read (the published grefs json is about 0.3 GB, instances.json 0.4).
MAX_FILE_BYTES = 4 * 1024**3
IMAGES_SUBDIR = Path("images") / "train2014"


def check_size(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> None:
    """DataError naming ``path`` when it is missing or larger than ``limit`` bytes."""
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"{what} not found: {path}") from None
    if size > limit:
        raise DataError(f"{what} {path} is {size} bytes, more than the limit of {limit}")


def _ann_list(v: Any) -> list[Any] | None:
    if isinstance(v, list):
        return v
    if isinstance(v, (int, str)):
        return [v]
    return None


def load_grefcoco(data_root: str | Path, split: str, max_bytes: int = MAX_FILE_BYTES) -> EvalData:
    """Read one split of gRefCOCO in its published layout.

    Raises:
        DataError: unknown split, missing folder or files, files too large or unreadable.
    """
    if split not in GREFCOCO_SPLITS:
        raise DataError(
            f"grefcoco has no split {split!r}; its splits are {', '.join(GREFCOCO_SPLITS)}"
        )
    root = Path(data_root)
    ds_dir = root / "grefcoco"
    if not ds_dir.is_dir():
        raise DataError(f"dataset folder not found: {ds_dir} (expected <data-root>/grefcoco/)")
    pickle_path = ds_dir / "grefs(unc).p"
    json_path = ds_dir / "grefs(unc).json"
    inst_path = ds_dir / "instances.json"
    problems: list[str] = []
    if pickle_path.is_file():
        refs_path = pickle_path
        check_size(refs_path, "refs file", max_bytes)
        raw_refs, problem = load_refs_pickle(refs_path)
        if problem:
            problems.append(problem)
    else:
        refs_path = json_path
        check_size(refs_path, "refs file", max_bytes)
        raw_refs = load_json(refs_path, "refs file")
        if not isinstance(raw_refs, list):
            raise DataError(
                f"refs file {refs_path} holds a {type(raw_refs).__name__}, expected a list of refs"
            )
    check_size(inst_path, "instances file", max_bytes)
    images, anns, by_image = _index_instances(
        load_json(inst_path, "instances file"), inst_path, problems
    )
    exprs: list[Expression] = []
    for k, raw in enumerate(raw_refs):
        ref = _norm(raw)
        if not isinstance(ref, dict):
            problems.append(f"{refs_path}: item {k} is a {type(ref).__name__}, not a ref; skipped")
            continue
        if ref.get("split") != split:
            continue
        ref_id = ref.get("ref_id", f"#{k}")
        sents = ref.get("sentences")
        ids = _ann_list(ref.get("ann_id"))
        if not isinstance(sents, list) or ids is None or "image_id" not in ref:
            problems.append(
                f"{refs_path}: ref {ref_id!r} lacks a sentence list, ann_id or image_id; skipped"
            )
            continue
        no_target = bool(ref.get("no_target")) or ids in ([], [-1])
        image_id = ref["image_id"]
        err = kind = None
        targets: list[Any] = []
        if not no_target:
            for a in ids:
                ann = anns.get(a) if isinstance(a, (int, str)) else None
                if ann is None:
                    err, kind = f"unknown ann_id {a!r} (not in {inst_path})", "unknown_ann"
                    break
                if ann.get("image_id") != image_id:
                    err = f"ann_id {a!r} belongs to image {ann.get('image_id')!r}, not {image_id!r}"
                    kind = "bad_record"
                    break
                if not ann.get("iscrowd"):
                    targets.append(a)
            if err is None and not targets:
                err, kind = "every annotation of the ref is a crowd annotation", "bad_annotation"
        if err is None and image_id not in images:
            err, kind = f"unknown image_id {image_id!r} (not in {inst_path})", "unknown_image"
        for j, s in enumerate(sents):
            if not isinstance(s, dict) or "sent_id" not in s:
                problems.append(f"{refs_path}: ref {ref_id!r} sentence {j} has no sent_id")
                continue
            text = s.get("raw")
            if not isinstance(text, str) or not text.strip():
                text = s.get("sent") if isinstance(s.get("sent"), str) else ""
            e_err, e_kind = err, kind
            if e_err is None and not str(text).strip():
                e_err, e_kind = "empty expression", "bad_record"
            exprs.append(
                Expression(
                    sent_id=s["sent_id"],
                    sentence=str(text),
                    image_id=image_id,
                    ann_id=tuple(targets),
                    ref_id=ref_id,
                    split=split,
                    category_id=None,
                    error=e_err,
                    error_kind=e_kind,
                )
            )
    return EvalData(
        name="grefcoco",
        split=split,
        format="grefcoco",
        expressions=_dedupe(exprs, problems),
        images=images,
        annotations=anns,
        images_dir=root / IMAGES_SUBDIR,
        anns_by_image=by_image,
        problems=problems,
        expected_count=None,
        sources={"refs": str(refs_path), "instances": str(inst_path)},
    )

"""Readers for referring-segmentation data: the REFER layout and a generic COCO-style one.

REFER layout (RefCOCO, RefCOCO+, RefCOCOg; METHOD.md "Data layout")::

    <root>/<dataset>/refs(<splitBy>).p     pickle (written by Python 2) of a list of refs:
                                           ref_id, ann_id, image_id, split, category_id,
                                           sent_ids, file_name, sentences=[{raw, sent,
                                           sent_id, tokens}]
    <root>/<dataset>/instances.json        COCO-style images / annotations / categories
    <root>/images/mscoco/images/train2014/ COCO_train2014_%012d.jpg

splitBy is ``unc`` for refcoco and refcoco+, ``umd`` for refcocog. The ground truth of a
ref is the mask of its annotation ``ann_id``; each sentence is one expression, fed as its
``raw`` text. Image files are named by the image entry's ``file_name`` in instances.json
(the ref's own ``file_name`` carries an annotation suffix and names no file).

Generic layout (custom data): a COCO-style instances JSON and a JSONL file with one
``{"image_id", "ann_id", "expression"}`` object a line (optional ``sent_id``, ``ref_id``,
``split``), images in a folder named by ``file_name``: :mod:`hybridgl.eval.generic`.

Problems in single records (unknown annotation, a ref without sentences, a bad JSONL
line) do not stop loading: the expression carries an ``error`` and the evaluation records
it as failed. Problems with whole files raise :class:`DataError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hybridgl.errors import DataError
from hybridgl.eval.annotations import lookup_ann_mask
from hybridgl.eval.pickles import _REF_KEYS, _norm, load_refs_pickle

#: dataset -> (splitBy, valid splits)
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "refcoco": ("unc", ("train", "val", "testA", "testB")),
    "refcoco+": ("unc", ("train", "val", "testA", "testB")),
    "refcocog": ("umd", ("train", "val", "test")),
    # not REFER layout: hybridgl.eval.datasets.load_dataset reads them
    "grefcoco": ("unc", ("train", "val", "testA", "testB")),
    "phrasecut": ("-", ("train", "miniv", "val", "test")),
}

#: Published expression counts of the evaluation splits (METHOD.md).
EXPECTED_COUNTS: dict[tuple[str, str], int] = {
    ("refcoco", "val"): 10834,
    ("refcoco", "testA"): 5657,
    ("refcoco", "testB"): 5095,
    ("refcoco+", "val"): 10758,
    ("refcoco+", "testA"): 5726,
    ("refcoco+", "testB"): 4889,
    ("refcocog", "val"): 4896,
    ("refcocog", "test"): 9602,
}

IMAGES_SUBDIR = Path("images") / "mscoco" / "images" / "train2014"
IMAGE_PATTERN = "COCO_train2014_{:012d}.jpg"


@dataclass(frozen=True)
class Expression:
    """One referring expression: the unit of evaluation.

    ``error`` is set when loading already found the record unusable (``error_kind``
    names the problem class, e.g. ``unknown_ann``).
    """

    sent_id: Any
    sentence: str
    image_id: Any
    ann_id: Any
    ref_id: Any = None
    split: str | None = None
    category_id: Any = None
    error: str | None = None
    error_kind: str | None = None


@dataclass
class EvalData:
    """Expressions of one split plus the COCO images and annotations they point to."""

    name: str
    split: str
    format: str
    expressions: list[Expression]
    images: dict[Any, dict[str, Any]]
    annotations: dict[Any, dict[str, Any]]
    images_dir: Path
    anns_by_image: dict[Any, list[Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    expected_count: int | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def image_path(self, image_id: Any) -> Path:
        """Path of an image file: ``images_dir / file_name`` from instances.json."""
        info = self.images.get(image_id)
        name = info.get("file_name") if info else None
        if not name:
            name = IMAGE_PATTERN.format(int(image_id))
        return self.images_dir / str(name)

    def image_size(self, image_id: Any) -> tuple[int, int] | None:
        """``(height, width)`` recorded in instances.json, if any."""
        info = self.images.get(image_id) or {}
        h, w = info.get("height"), info.get("width")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            return h, w
        return None

    def image_ann_ids(self, image_id: Any) -> list[Any]:
        """Ids of every annotation of an image (instances.json order)."""
        return list(self.anns_by_image.get(image_id, []))

    def ann_mask(self, ann_id: Any, height: int, width: int) -> np.ndarray:
        """``(height, width)`` bool mask of an annotation.

        Raises:
            DataError: unknown annotation or unusable segmentation.
        """
        return lookup_ann_mask(
            self.annotations, ann_id, height, width, where=self.sources.get("instances")
        )


# --------------------------------------------------------------------------- COCO json


def load_json(path: Path, what: str) -> Any:
    """Read a JSON file; :class:`DataError` names the file and the problem."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {path} is not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None


def _index_instances(
    data: Any, path: Path, problems: list[str]
) -> tuple[dict[Any, dict], dict[Any, dict], dict[Any, list]]:
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path} is not COCO instances JSON (needs 'images' and 'annotations')")
    images: dict[Any, dict] = {}
    for k, im in enumerate(data.get("images") or []):
        if isinstance(im, dict) and "id" in im:
            images[im["id"]] = im
        else:
            problems.append(f"{path}: images[{k}] has no id; skipped")
    anns: dict[Any, dict] = {}
    by_image: dict[Any, list] = {}
    for k, a in enumerate(data["annotations"]):
        if not (isinstance(a, dict) and "id" in a and "image_id" in a):
            problems.append(f"{path}: annotations[{k}] lacks id or image_id; skipped")
            continue
        anns[a["id"]] = a
        by_image.setdefault(a["image_id"], []).append(a["id"])
    return images, anns, by_image


def _check_expression(e: Expression, images: dict, anns: dict, instances_path: Path) -> Expression:
    """Attach an error to an expression whose annotation or image is unknown."""
    if e.error:
        return e
    err = kind = None
    try:
        ann = anns.get(e.ann_id)
        hash(e.image_id)
    except TypeError:
        return replace(e, error="ann_id and image_id must be integers", error_kind="bad_record")
    if ann is None:
        err, kind = f"unknown ann_id {e.ann_id!r} (not in {instances_path})", "unknown_ann"
    elif e.image_id is not None and ann.get("image_id") != e.image_id:
        err, kind = (
            f"ann_id {e.ann_id!r} belongs to image {ann.get('image_id')!r}, "
            f"not to image {e.image_id!r}",
            "bad_record",
        )
    elif e.image_id not in images:
        err, kind = f"unknown image_id {e.image_id!r} (not in {instances_path})", "unknown_image"
    elif not e.sentence.strip():
        err, kind = "empty expression", "bad_record"
    if err is None:
        return e
    return replace(e, error=err, error_kind=kind)


def _dedupe(exprs: Iterable[Expression], problems: list[str]) -> list[Expression]:
    seen: set[str] = set()
    out: list[Expression] = []
    for e in exprs:
        key = str(e.sent_id)
        if key in seen:
            problems.append(f"duplicate sent_id {e.sent_id!r}: later occurrence skipped")
            continue
        seen.add(key)
        out.append(e)
    return out


# --------------------------------------------------------------------------- REFER


def check_dataset_split(dataset: str, split: str) -> str:
    """Validate a dataset / split pair; return its splitBy.

    Raises:
        DataError: unknown dataset or a split the dataset does not have.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    split_by, splits = DATASETS[dataset]
    if split not in splits:
        raise DataError(
            f"{dataset} ({split_by}) has no split {split!r}; its splits are {', '.join(splits)}"
        )
    return split_by


def load_refer(data_root: str | Path, dataset: str, split: str) -> EvalData:
    """Read one split of RefCOCO, RefCOCO+ or RefCOCOg in the REFER layout.

    ``grefcoco`` and ``phrasecut`` have their own published layouts: read them (or any
    dataset of :data:`DATASETS`) with :func:`hybridgl.eval.datasets.load_dataset`.

    Raises:
        DataError: invalid dataset/split, missing data root, refs file or instances.json,
            unreadable files.
    """
    split_by = check_dataset_split(dataset, split)
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    if dataset in ("grefcoco", "phrasecut"):
        raise DataError(
            f"{dataset} is not in the REFER layout: read it with hybridgl.eval.load_dataset"
        )
    ds_dir = root / dataset
    if not ds_dir.is_dir():
        raise DataError(f"dataset folder not found: {ds_dir} (expected <data-root>/{dataset}/)")
    refs_path = ds_dir / f"refs({split_by}).p"
    inst_path = ds_dir / "instances.json"
    problems: list[str] = []
    raw_refs, problem = load_refs_pickle(refs_path)
    if problem:
        problems.append(problem)
    images, anns, by_image = _index_instances(
        load_json(inst_path, "instances file"), inst_path, problems
    )
    exprs: list[Expression] = []
    memo: dict[int, Any] = {}
    for k, raw in enumerate(raw_refs):
        ref = _norm(raw, memo)
        if not isinstance(ref, dict):
            problems.append(f"{refs_path}: item {k} is a {type(ref).__name__}, not a ref; skipped")
            continue
        if ref.get("split") != split:
            continue
        missing = [key for key in _REF_KEYS if key not in ref]
        sents = ref.get("sentences")
        if missing or not isinstance(sents, list):
            msg = f"ref {ref.get('ref_id', '#' + str(k))!r} lacks {', '.join(missing) or 'a sentence list'}"
            problems.append(f"{refs_path}: {msg}; skipped")
            continue
        for j, s in enumerate(sents):
            if not isinstance(s, dict) or "sent_id" not in s:
                problems.append(f"{refs_path}: ref {ref['ref_id']!r} sentence {j} has no sent_id")
                continue
            text = s.get("raw")
            if not isinstance(text, str) or not text.strip():
                sent = s.get("sent")
                text = sent if isinstance(sent, str) else ""
            e = Expression(
                sent_id=s["sent_id"],
                sentence=text,
                image_id=ref["image_id"],
                ann_id=ref["ann_id"],
                ref_id=ref["ref_id"],
                split=split,
                category_id=ref.get("category_id"),
            )
            exprs.append(_check_expression(e, images, anns, inst_path))
    return EvalData(
        name=dataset,
        split=split,
        format="refer",
        expressions=_dedupe(exprs, problems),
        images=images,
        annotations=anns,
        images_dir=root / IMAGES_SUBDIR,
        anns_by_image=by_image,
        problems=problems,
        expected_count=EXPECTED_COUNTS.get((dataset, split)),
        sources={"refs": str(refs_path), "instances": str(inst_path)},
    )

"""PhraseCut (Wu et al., CVPR 2020): phrases over Visual Genome images, often several instances.

Published layout (``VGPhraseCut_v0``)::

    <root>/refer_{train,miniv,val,test}.json   list of tasks: task_id, image_id (Visual
                                               Genome id), phrase, instance_boxes [[x, y,
                                               w, h], ...], Polygons (per instance, a list
                                               of polygons, each a list of [x, y] points)
    <root>/image_data_split.json               list of {image_id, width, height, split, ...}
    <root>/images/<image_id>.jpg               the Visual Genome images

The target of a task is the union of all its instances (each instance the union of its
polygons). Each instance becomes one COCO-style annotation with the id
``"<task_id>/<k>"`` (polygons flattened to COCO's ``[x1, y1, x2, y2, ...]``), so the
evaluation machinery of :mod:`hybridgl.eval.task` runs unchanged; an expression's
``ann_id`` is the tuple of its instances' ids. Metrics: the RefCOCO ones (mean IoU,
cumulative IoU, Pr@0.5 / 0.7 / 0.9 among P@t). Defences as for gRefCOCO (size limit, errors
naming the file, bad tasks become failed expressions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridgl.eval.grefcoco import MAX_FILE_BYTES, check_size
from hybridgl.eval.refer import DataError, EvalData, Expression, _dedupe, load_json

__all__ = ["PHRASECUT_SPLITS", "load_phrasecut"]

PHRASECUT_SPLITS: tuple[str, ...] = ("train", "miniv", "val", "test")


def _flat_polygon(poly: Any) -> list[float] | None:
    if not isinstance(poly, list):
        return None
    out: list[float] = []
    for pt in poly:
        if not (isinstance(pt, (list, tuple)) and len(pt) == 2):
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt):
            return None
        out += [float(pt[0]), float(pt[1])]
    return out


def load_phrasecut(
    data_root: str | Path,
    split: str,
    images_dir: str | Path | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> EvalData:
    """Read one split of PhraseCut in its published layout.

    Raises:
        DataError: unknown split, missing or too large files, unreadable JSON.
    """
    if split not in PHRASECUT_SPLITS:
        raise DataError(
            f"phrasecut has no split {split!r}; its splits are {', '.join(PHRASECUT_SPLITS)}"
        )
    root = Path(data_root)
    refer_path = root / f"refer_{split}.json"
    info_path = root / "image_data_split.json"
    check_size(refer_path, "refer file", max_bytes)
    check_size(info_path, "image info file", max_bytes)
    tasks = load_json(refer_path, "refer file")
    infos = load_json(info_path, "image info file")
    if not isinstance(tasks, list):
        raise DataError(f"refer file {refer_path} holds a {type(tasks).__name__}, expected a list")
    if not isinstance(infos, list):
        raise DataError(
            f"image info file {info_path} holds a {type(infos).__name__}, expected a list"
        )
    problems: list[str] = []
    images: dict[Any, dict[str, Any]] = {}
    for k, im in enumerate(infos):
        if isinstance(im, dict) and isinstance(im.get("image_id"), int):
            images[im["image_id"]] = {
                "id": im["image_id"],
                "file_name": f"{im['image_id']}.jpg",
                "height": im.get("height"),
                "width": im.get("width"),
            }
        else:
            problems.append(f"{info_path}: item {k} has no integer image_id; skipped")
    anns: dict[Any, dict[str, Any]] = {}
    by_image: dict[Any, list[Any]] = {}
    exprs: list[Expression] = []
    for k, task in enumerate(tasks):
        if not isinstance(task, dict) or "task_id" not in task:
            problems.append(f"{refer_path}: item {k} is not a task with a task_id; skipped")
            continue
        tid = str(task["task_id"])
        image_id = task.get("image_id")
        phrase = task.get("phrase")
        polys = task.get("Polygons")
        err = kind = None
        ids: list[str] = []
        if not isinstance(phrase, str) or not phrase.strip():
            err, kind = "empty phrase", "bad_record"
        elif not isinstance(polys, list) or not polys:
            err, kind = "task has no Polygons", "bad_annotation"
        elif image_id not in images:
            err, kind = f"unknown image_id {image_id!r} (not in {info_path})", "unknown_image"
        else:
            for j, inst in enumerate(polys):
                flat = [_flat_polygon(p) for p in inst] if isinstance(inst, list) else [None]
                good = [f for f in flat if f is not None and len(f) >= 6]
                if not good:
                    err, kind = f"instance {j} has no usable polygon", "bad_annotation"
                    break
                aid = f"{tid}/{j}"
                anns[aid] = {"id": aid, "image_id": image_id, "segmentation": good, "iscrowd": 0}
                by_image.setdefault(image_id, []).append(aid)
                ids.append(aid)
        exprs.append(
            Expression(
                sent_id=tid,
                sentence=phrase if isinstance(phrase, str) else "",
                image_id=image_id,
                ann_id=tuple(ids) if err is None else (),
                ref_id=tid,
                split=split,
                error=err,
                error_kind=kind,
            )
        )
    return EvalData(
        name="phrasecut",
        split=split,
        format="phrasecut",
        expressions=_dedupe(exprs, problems),
        images=images,
        annotations=anns,
        images_dir=Path(images_dir) if images_dir is not None else root / "images",
        anns_by_image=by_image,
        problems=problems,
        expected_count=None,
        sources={"refs": str(refer_path), "images_info": str(info_path)},
    )
